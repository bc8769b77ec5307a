// Shared by the scenario scripts: read the scenario's argument, print one JSON line, and turn any
// failure into a JSON `error` with exit status 1, so the pytest side reads what the SDK saw.
import { createOpenAI } from '@ai-sdk/openai';
import { z } from 'zod';

/** The scenario's argument: one JSON object (baseURL, apiKey, model, prompt, fields). */
export function args() {
  return JSON.parse(process.argv[2]);
}

/** The provider as an application builds it: only a base URL and a key, every other setting default. */
export function provider(a) {
  return createOpenAI({ baseURL: a.baseURL, apiKey: a.apiKey });
}

/** A zod object of string fields: the stand-ins answer a schema with strings, each upstream its own names. */
export function schemaOf(fields) {
  return z.object(Object.fromEntries(fields.map((name) => [name, z.string()])));
}

/** The usage as the SDK reports it to the application, and the gateway's request id to find its ledger row. */
export function seen(usage, response) {
  return {
    usage: { inputTokens: usage.inputTokens, outputTokens: usage.outputTokens, totalTokens: usage.totalTokens },
    requestId: response.headers?.['x-request-id'] ?? null,
    responseId: response.id ?? null,
  };
}

export async function run(scenario) {
  try {
    process.stdout.write(JSON.stringify(await scenario(args())) + '\n');
  } catch (e) {
    const error = { name: e?.name, message: e?.message, statusCode: e?.statusCode, body: e?.responseBody };
    process.stdout.write(JSON.stringify({ error }) + '\n');
    process.exitCode = 1;
  }
}
