// generateObject with a zod schema on the default (Responses) model: sent as `text.format` json_schema.
import { generateObject } from 'ai';
import { provider, run, schemaOf, seen } from './common.mjs';

await run(async (a) => {
  const r = await generateObject({ model: provider(a)(a.model), schema: schemaOf(a.fields), prompt: a.prompt, maxRetries: 0 });
  return { object: r.object, finishReason: r.finishReason, ...seen(r.usage, r.response) };
});
