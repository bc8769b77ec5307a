"""What Slack is sent: Slack's escaping, so an alias is shown as written and never a mention or a
link, and a title that says what kind of alert it is."""

from __future__ import annotations

from meterway.alerts import Alert, credits_alert


def test_slack_text_escapes_ampersands_and_angle_brackets_as_slack_asks() -> None:
    alert = Alert(
        event="budget_crossed",
        scope="key",
        dedupe="k",
        event_message="Key Budget: Budget Crossed <!channel> & more",
        key_alias="<!here|ci> & <https://evil.example|click>",
    )
    text = alert.slack_body()["text"]
    assert "<" not in text and ">" not in text
    assert "&lt;!channel&gt; &amp; more" in text
    assert "Key alias: `&lt;!here|ci&gt; &amp; &lt;https://evil.example|click&gt;`" in text
    assert text.startswith("*Budget alert* `budget_crossed`")


def test_credit_alerts_are_titled_as_credit_alerts_in_slack() -> None:
    text = credits_alert("credits_exhausted", "acme", "acme:p1:out", available=0).slack_body()["text"]
    assert text.startswith("*Credits alert* `credits_exhausted`")
