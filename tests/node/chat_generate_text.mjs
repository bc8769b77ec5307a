// The control: the same generateText on `.chat(model)`, the chat completions API.
import { generateText } from 'ai';
import { provider, run, seen } from './common.mjs';

await run(async (a) => {
  const r = await generateText({ model: provider(a).chat(a.model), prompt: a.prompt, maxRetries: 0 });
  return { text: r.text, finishReason: r.finishReason, ...seen(r.usage, r.response) };
});
