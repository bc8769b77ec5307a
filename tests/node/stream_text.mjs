// streamText on the default (Responses) model. streamText reports a failed stream only as an `error`
// part, so every part is read: an error part fails the scenario instead of ending with empty text.
import { streamText } from 'ai';
import { provider, run, seen } from './common.mjs';

await run(async (a) => {
  const r = streamText({ model: provider(a)(a.model), prompt: a.prompt, maxRetries: 0 });
  const deltas = [];
  for await (const part of r.stream) {
    if (part.type === 'error') throw part.error;
    if (part.type === 'text-delta') deltas.push(part.text);
  }
  const step = await r.finalStep;
  return { text: deltas.join(''), deltas: deltas.length, finishReason: await r.finishReason, ...seen(await r.usage, step.response) };
});
