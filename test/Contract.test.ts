/**
 * ez-api's contract, pinned by the spec's own golden values and test vectors
 * (`ez-api-contract.md`), never by this library's output.
 */
import { createHash } from "node:crypto"
import { describe, expect, it } from "vitest"
import { Contract, Entities, Snapshots } from "../src/ezapi/index.js"

describe("§3.1 token hash", () => {
  it("is sha256 of the raw bytes, lowercase hex, nothing trimmed", () => {
    expect(Contract.hashToken("sk-test")).toBe("f3abf2a6cc4f00987743db5f544ba345b4899ae31f326d8ee9c4816de153c9e0")
    expect(Contract.hashToken(" sk-test")).not.toBe(Contract.hashToken("sk-test"))
  })
})

describe("§2.4 ChecksumFromPayloads: the spec's test vectors", () => {
  const goldenModel =
    `{"name":"ns.m","kind":"chat","context_window":128000,"supports_vision":true,"supports_functions":true,"supports_tool_choice":true,"supports_fim":true,"max_output_tokens":8192}`
  it("{}", () => {
    expect(Contract.checksumFromPayloads([])).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
  })
  it(`{"b":"2","a":"1"}: sorted by field`, () => {
    expect(Contract.checksumFromPayloads([["b", "2"], ["a", "1"]])).toBe("16f3afa1c05350e327e79c057d4c6946e9e29d1734603350a0d7f6fd927c6538")
  })
  it(`{"ns.m": golden model}`, () => {
    expect(Contract.checksumFromPayloads([["ns.m", goldenModel]])).toBe("28aef88cdb4444ec81259b2b0394b47e9e1c63b9fbda6702fd62a1c65e92eb3f")
  })
  it("sorts by UTF-8 bytes (Go sort.Strings), not by UTF-16 code units (JS <)", () => {
    // In UTF-16 the emoji (0xD83D ...) sorts before U+FF5E; in UTF-8 (EF BD 9E < F0 9F ...) after it.
    const a = "\u{FF5E}"
    const b = "\u{1F600}"
    expect(b < a).toBe(true)
    const bytes = Buffer.concat([Buffer.from(`${a}\n1\n`), Buffer.from(`${b}\n2\n`)])
    const expected = createHash("sha256").update(bytes).digest("hex")
    expect(Contract.checksumFromPayloads([[b, "2"], [a, "1"]])).toBe(expected)
  })
})

describe("§2.3 model capability: the golden model_snapshot.json", () => {
  it("an admin model named ns.m with the golden's capabilities encodes to the golden bytes", () => {
    const model = Entities.Model.make({
      id: 1,
      name: "ns.m",
      kind: "chat",
      contextWindow: 128000,
      costPerToken: 0,
      maxOutputTokens: 8192,
      supportsStreaming: false,
      supportsTools: true,
      supportsVision: true,
      supportsJson: true,
      supportsToolChoice: true,
      supportsFim: true,
      version: 1
    })
    const field = Snapshots.modelField(model.name)!
    expect(field).toBe("ns.m")
    expect(Snapshots.modelValue(field, model)).toBe(
      `{"name":"ns.m","kind":"chat","context_window":128000,"supports_vision":true,"supports_functions":true,"supports_tool_choice":true,"supports_fim":true,"max_output_tokens":8192}`
    )
  })
  it("NormalizeKind: lowercased and trimmed, blank is chat, anything else other", () => {
    expect(Contract.normalizeKind(" Embedding ")).toBe("embedding")
    expect(Contract.normalizeKind("")).toBe("chat")
    expect(Contract.normalizeKind("vision")).toBe("other")
  })
  it("a model is filed under its binding key (ParseModelRef with namespace default)", () => {
    expect(Snapshots.modelField("gpt-4o")).toBe("default.gpt-4o")
    expect(Snapshots.modelField(" team . claude ")).toBe("team.claude")
    expect(Snapshots.modelField("gpt-4.1")).toBe("gpt-4.1")
    expect(Snapshots.modelField(".x")).toBeUndefined()
  })
})

describe("§2.1 provider snapshot: the golden provider_snapshot.json", () => {
  it("api key 42 of group pg1 (id 7), vertex-express, blank location and routing group", () => {
    const group = Entities.ProviderGroup.make({
      id: 7,
      name: "pg1",
      type: "Vertex-Express",
      baseUrl: "",
      googleProject: "proj-1",
      googleLocation: null,
      models: ["gemini-3-pro-preview"],
      status: "active",
      routingGroup: "",
      version: 1
    })
    const key = Entities.ApiKey.make({
      id: 42, groupId: 7, apiKey: "sk-123", weight: 0, status: "active", autoBan: true, banUntil: null, version: 1
    })
    expect(JSON.stringify(Snapshots.providerValue(group, key))).toBe(
      `{"id":42,"name":"pg1#42","type":"vertex-express","base_url":"","api_key":"sk-123","google_project":"proj-1","google_location":"global","group_id":7,"group":"default","models":["gemini-3-pro-preview"],"status":"active","auto_ban":true}`
    )
    const snap = Snapshots.providers([group], [key])
    expect(snap.entries.map(([f]) => f)).toEqual(["42"])
    expect(snap.checksum).toBe(Contract.checksumFromPayloads(snap.entries))
  })
  it("ban_until is unix seconds, and only when set; weight when not zero", () => {
    const group = Entities.ProviderGroup.make({
      id: 1, name: "g", type: "openai", baseUrl: "https://x", googleProject: null, googleLocation: null, models: [], status: "active",
      routingGroup: "gold", version: 1
    })
    const key = Entities.ApiKey.make({
      id: 3, groupId: 1, apiKey: "sk", weight: 5, status: "auto_disabled", autoBan: false,
      banUntil: new Date("2026-12-01T00:00:00Z"), version: 1
    })
    const value = Snapshots.providerValue(group, key)
    expect(value).toMatchObject({ ban_until: 1796083200, weight: 5, group: "gold", google_location: "", google_project: "", auto_ban: false })
  })
})

describe("Go's strings.TrimSpace, which every trim of the contract is", () => {
  it("strips Unicode White_Space (U+0085 included), and not U+FEFF, which JS trim would strip", () => {
    expect(Contract.trim("\u0085 gpt-4o\u3000\t")).toBe("gpt-4o")
    expect(Contract.trim("\ufeffgpt-4o")).toBe("\ufeffgpt-4o")
    expect(Contract.parseModelRef("\u0085team.gpt-4o", "default")).toEqual({ namespace: "team", publicModel: "gpt-4o" })
    expect(Contract.normalizeGroup("\ufeff")).toBe("\ufeff")
    expect(Contract.normalizeGroup("\u0085")).toBe("default")
    expect(Contract.resolveUpstreamModel("exact", "", "gpt-4o", ["\ufeffgpt-4o", "gpt-4o\u0085"])).toEqual({ _tag: "Resolved", model: "gpt-4o" })
  })
})

describe("§2.1 provider.DefaultGoogleLocation", () => {
  it("trims the location for every type, and gives a blank one global in the Vertex family only", () => {
    expect(Contract.defaultGoogleLocation("vertex", " us-central1 ")).toBe("us-central1")
    expect(Contract.defaultGoogleLocation("gemini", " europe-west4\t")).toBe("europe-west4")
    expect(Contract.defaultGoogleLocation(" Vertex-Express ", "  ")).toBe("global")
    expect(Contract.defaultGoogleLocation("openai", "  ")).toBe("")
  })
})

describe("§3.2 group normalization, §3.3 model references, §3.4 model ids", () => {
  it("group: blank is default, anything else unchanged (not trimmed)", () => {
    expect(Contract.normalizeGroup("")).toBe("default")
    expect(Contract.normalizeGroup("  ")).toBe("default")
    expect(Contract.normalizeGroup(" gold ")).toBe(" gold ")
  })
  it("ParseModelRef splits at the first dot and trims", () => {
    expect(Contract.parseModelRef("gpt-4.1", "default")).toEqual({ namespace: "gpt-4", publicModel: "1" })
    expect(Contract.parseModelRef("default.gpt-4.1", "x")).toEqual({ namespace: "default", publicModel: "gpt-4.1" })
    expect(Contract.parseModelRef(" m ", " ns ")).toEqual({ namespace: "ns", publicModel: "m" })
    expect(Contract.parseModelRef("m", " ")).toBeUndefined()
    expect(Contract.parseModelRef("a.", "d")).toBeUndefined()
  })
  it("NormalizeModelID", () => {
    expect(Contract.normalizeModelId("Moonshot/Kimi2")).toBe("kimi2")
    expect(Contract.normalizeModelId("a/b/c")).toBe("c")
    expect(Contract.normalizeModelId("abc/")).toBe("abc/")
  })
})

describe("§3.5 selector resolution", () => {
  const resolve = Contract.resolveUpstreamModel
  it("exact (and blank type): first trimmed equal model; an empty value means the public model", () => {
    expect(resolve("exact", " gpt-4o ", "x", ["a", " gpt-4o "])).toEqual({ _tag: "Resolved", model: "gpt-4o" })
    expect(resolve("", "", " gpt-4o ", ["gpt-4o", "gpt-4o"])).toEqual({ _tag: "Resolved", model: "gpt-4o" })
    expect(resolve("exact", "", "", ["gpt-4o"])._tag).toBe("Unresolved")
    expect(resolve("exact", "nope", "x", ["gpt-4o"])._tag).toBe("Unresolved")
  })
  it("regex: unanchored, exactly one hit", () => {
    expect(resolve("regex", "gpt-4o", "x", ["gpt-4o", "gpt-4o-mini"])._tag).toBe("Unresolved")
    expect(resolve("regex", "mini", "x", ["gpt-4o", "gpt-4o-mini"])).toEqual({ _tag: "Resolved", model: "gpt-4o-mini" })
    expect(resolve("regex", "mini", "x", ["gpt-4o-mini", "gpt-4o-mini"])._tag).toBe("Unresolved")
    expect(resolve("regex", "([", "x", ["a"])._tag).toBe("Unresolved")
    expect(resolve("regex", "(?=a)a", "x", ["a"])._tag).toBe("Unresolved") // no lookaround in RE2
    expect(resolve("regex", "(?i)GPT-4O$", "x", ["gpt-4o", "gpt-4o-mini"])).toEqual({ _tag: "Resolved", model: "gpt-4o" })
    expect(resolve("regex", "\\Agpt-4o\\z", "x", ["gpt-4o", "gpt-4o-mini"])).toEqual({ _tag: "Resolved", model: "gpt-4o" })
    expect(resolve("regex", "(?P<v>mini)", "x", ["gpt-4o", "gpt-4o-mini"])).toEqual({ _tag: "Resolved", model: "gpt-4o-mini" })
  })
  it("regex: a pattern that backtracks without end in JS (RE2 is linear) is unresolved within its budget, not a frozen process", () => {
    const started = Date.now()
    const result = resolve("regex", "(a+)+$", "x", ["gpt-4o", `${"a".repeat(40)}!`])
    expect(result).toMatchObject({ _tag: "Unresolved" })
    expect(Date.now() - started).toBeLessThan(2_000)
    // The next resolution runs as usual.
    expect(resolve("regex", "mini", "x", ["gpt-4o", "gpt-4o-mini"])).toEqual({ _tag: "Resolved", model: "gpt-4o-mini" })
  })
  it("normalize_exact: exactly one hit, the original trimmed model", () => {
    expect(resolve("normalize_exact", "kimi2", "x", ["Moonshot/Kimi2 "])).toEqual({ _tag: "Resolved", model: "Moonshot/Kimi2" })
    expect(resolve("normalize_exact", "gemini 1.5 flash", "x", ["Gemini-1.5-Flash"])._tag).toBe("Unresolved")
    expect(resolve("normalize_exact", "k", "x", ["a/k", "b/K"])._tag).toBe("Unresolved")
  })
  it("an unknown type is unsupported", () => {
    expect(resolve("fuzzy", "a", "x", ["a"])._tag).toBe("Unresolved")
  })
})

describe("§2.2 binding snapshot", () => {
  const at = new Date("2024-12-24T00:00:00Z")
  const group = (id: number, status: "active" | "suspended", models: Array<string>) =>
    Entities.ProviderGroup.make({
      id, name: `g${id}`, type: "openai", baseUrl: "", googleProject: null, googleLocation: null, models, status, routingGroup: "", version: 1
    })
  const key = (id: number, groupId: number, status: "active" | "auto_disabled" = "active") =>
    Entities.ApiKey.make({ id, groupId, apiKey: "k", weight: 1, status, autoBan: true, banUntil: null, version: 1 })
  const binding = (id: number, groupId: number, extra: Partial<ConstructorParameters<typeof Entities.Binding>[0]> = {}) =>
    Entities.Binding.make({
      id, namespace: "default", publicModel: "gpt-4o", groupId, weight: 0, selectorType: "exact", selectorValue: "", status: "active",
      updatedAt: at, version: 1, ...extra
    })

  it("one BindingSnapshot per ns.public_model; candidates flat, omitempty, upstreams keyed by provider id", () => {
    const snap = Snapshots.bindings(
      [binding(1, 1, { weight: 10 }), binding(2, 2), binding(3, 1, { selectorType: "regex", selectorValue: "gpt" })],
      [group(1, "active", ["gpt-4o", "gpt-4o-mini"]), group(2, "active", ["gpt-4o"])],
      [key(5, 1), key(3, 1), key(4, 1, "auto_disabled")]
    )
    expect(snap.entries.map(([f]) => f)).toEqual(["default.gpt-4o"])
    expect(JSON.parse(snap.entries[0]![1])).toEqual({
      namespace: "default",
      public_model: "gpt-4o",
      status: "active",
      updated_at: 1734998400,
      candidates: [
        { group_id: 1, route_group: "g1", weight: 10, selector_type: "exact", status: "active", upstreams: { "3": "gpt-4o", "5": "gpt-4o" } },
        { group_id: 2, route_group: "g2", selector_type: "exact", status: "active", error: "no_provider", upstreams: null },
        { group_id: 1, route_group: "g1", selector_type: "regex", selector_value: "gpt", status: "active", error: "config_error", upstreams: null }
      ]
    })
  })
})
