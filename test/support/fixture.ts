/**
 * A small gateway: three provider groups, their api keys, and bindings that exercise every
 * selector and both candidate errors. Inserted in this order into a fresh database, rows get ids
 * 1, 2, 3, ... so the snapshots built from the database match the golden files.
 */
import type { ControlPlane } from "../../src/ezapi/index.js"

export const groups: ReadonlyArray<ControlPlane.ProviderGroupInput> = [
  { name: "openai-main", type: "openai", baseUrl: "https://api.openai.example/v1", models: ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"] },
  { name: "vertex", type: "vertex", baseUrl: "", googleProject: "proj-1", googleLocation: "us-central1", models: ["gemini-1.5-pro", "Gemini-1.5-Flash"] },
  { name: "spare", type: "openai", baseUrl: "https://spare.example/v1", models: ["gpt-4o"], status: "suspended" }
]

export const apiKeys: ReadonlyArray<ControlPlane.ApiKeyInput> = [
  { groupId: 1, apiKey: "sk-one", weight: 3 },
  { groupId: 1, apiKey: "sk-two", weight: 1, status: "auto_disabled", banUntil: new Date("2026-12-01T00:00:00Z") },
  { groupId: 1, apiKey: "sk-three", weight: 2 },
  { groupId: 2, apiKey: "vertex-sa", weight: 1 },
  { groupId: 3, apiKey: "sk-spare", weight: 1 }
]

export const bindings: ReadonlyArray<ControlPlane.BindingInput> = [
  { namespace: "default", publicModel: "gpt-4o", groupId: 1, weight: 10 },
  { namespace: "default", publicModel: "gpt-4o", groupId: 3, weight: 1 },
  { namespace: "default", publicModel: "mini", groupId: 1, selectorType: "regex", selectorValue: "gpt-4o-mi.*" },
  { namespace: "default", publicModel: "gemini-flash", groupId: 2, selectorType: "normalize_exact", selectorValue: "gemini 1.5 flash" },
  { namespace: "team-a", publicModel: "claude", groupId: 1, selectorType: "exact", selectorValue: "claude-3" },
  { namespace: "team-a", publicModel: "broken", groupId: 2, selectorType: "regex", selectorValue: "([" , status: "suspended" }
]
