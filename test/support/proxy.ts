export * from "../../scripts/proxy.js"
