/**
 * A TCP proxy in front of a real server, so a test can cut the connection (refused), blackhole it
 * (accepted, never answered) and restore it, without touching the server others use.
 */
import { createServer, connect, type Server, type Socket } from "node:net"
import { freePort } from "./services.js"

export interface Proxy {
  readonly port: number
  readonly url: (scheme: string) => string
  /** Close every connection and refuse new ones, as a stopped server would. */
  readonly cut: () => Promise<void>
  /** Accept connections but never forward a byte, as a hung server would. */
  readonly blackhole: () => void
  /**
   * The connections open now stop forwarding (never closed, never answered), as a flow a
   * firewall dropped would; new connections are forwarded as usual.
   */
  readonly stall: () => void
  readonly restore: () => Promise<void>
  readonly close: () => Promise<void>
}

export const startProxy = async (targetPort: number): Promise<Proxy> => {
  const port = await freePort()
  const sockets = new Set<Socket>()
  let mode: "forward" | "blackhole" = "forward"
  let server: Server | undefined

  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const s = createServer((client) => {
        sockets.add(client)
        client.on("close", () => sockets.delete(client))
        client.on("error", () => client.destroy())
        if (mode === "blackhole") return
        const upstream = connect(targetPort, "127.0.0.1")
        sockets.add(upstream)
        upstream.on("close", () => {
          sockets.delete(upstream)
          client.destroy()
        })
        upstream.on("error", () => upstream.destroy())
        client.on("close", () => upstream.destroy())
        client.pipe(upstream)
        upstream.pipe(client)
      })
      s.once("error", reject)
      s.listen(port, "127.0.0.1", () => {
        server = s
        resolve()
      })
    })

  const stopListening = () =>
    new Promise<void>((resolve) => {
      const s = server
      server = undefined
      for (const socket of sockets) socket.destroy()
      sockets.clear()
      if (s === undefined) return resolve()
      s.close(() => resolve())
    })

  await listen()
  return {
    port,
    url: (scheme) => `${scheme}://127.0.0.1:${port}`,
    cut: stopListening,
    blackhole: () => {
      mode = "blackhole"
      // Existing connections stop answering too.
      for (const socket of sockets) socket.pause()
    },
    stall: () => {
      for (const socket of sockets) socket.pause()
    },
    restore: async () => {
      await stopListening()
      mode = "forward"
      await listen()
    },
    close: stopListening
  }
}
