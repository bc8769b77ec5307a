// A conversation of two turns as a chat application keeps it: the first answer's response messages
// go back in the second request, as the AI SDK sends them (with `store` on, its default, an
// earlier assistant message goes as an `item_reference` to the stored output item).
import { generateText } from 'ai';
import { provider, run, seen } from './common.mjs';

await run(async (a) => {
  const model = provider(a)(a.model);
  // `store: false` makes the SDK send every earlier item itself instead of a reference to it.
  const providerOptions = a.store === false ? { openai: { store: false } } : undefined;
  const asked = { role: 'user', content: a.prompt };
  const first = await generateText({ model, messages: [asked], providerOptions, maxRetries: 0 });
  const again = { role: 'user', content: a.again };
  const second = await generateText({
    model,
    messages: [asked, ...first.response.messages, again],
    providerOptions,
    maxRetries: 0,
  });
  return {
    first: { text: first.text, ...seen(first.usage, first.response) },
    second: { text: second.text, ...seen(second.usage, second.response) },
    sent: second.request.body,
  };
});
