// A js-libp2p peer for p2pnode's interop tests and measurements.
//
// It joins the network the way any third-party client would: TCP + Noise + Yamux, identify, ping,
// gossipsub on p2pnode/capacity/2. Every capacity ad it receives is decoded and verified from
// specs/ alone (restricted CBOR via cborg, ed25519 via @noble/curves): no p2pnode code is used.
//
// Configuration: P2P_LISTEN (multiaddr, default /ip4/127.0.0.1/tcp/0), P2P_DIAL (comma-separated
// multiaddrs). It prints one JSON object per line on stdout (events) and takes one JSON command
// per line on stdin: dial, ping, perf (download from a peer's /perf/1.0.0), publish (hex),
// publish_ad (a valid ad of its own), identify, peers, mesh, stop. With P2P_PERF=1 it also serves
// /perf/1.0.0.
import './polyfill.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { base58btc } from 'multiformats/bases/base58'
import { decode, encode } from 'cborg'
import { ed25519 } from '@noble/curves/ed25519.js'
import { createInterface } from 'node:readline'

const TOPIC = 'p2pnode/capacity/2'
const DOMAIN = new TextEncoder().encode('p2pnode/capacity-ad/1\n')
const PEER_PREFIX = Uint8Array.from([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
const MAX_AD_BYTES = 4096

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const hex = (u8) => Buffer.from(u8).toString('hex')
const concat = (a, b) => { const out = new Uint8Array(a.length + b.length); out.set(a); out.set(b, a.length); return out }

// specs/cbor.md: restricted CBOR, no tags, no indefinite lengths, no trailing bytes.
const CBOR_OPTS = { strict: true, allowIndefinite: false, allowUndefined: false, allowBigInt: true, rejectDuplicateMapKeys: true, useMaps: false, tags: [] }

// specs/capacity-ad.md, validation steps 2-6 (the ones a third party can check on its own).
export function verifyAd (data) {
  if (data.length > MAX_AD_BYTES) throw new Error('oversized')
  const env = decode(data, CBOR_OPTS)
  if (!Array.isArray(env) || env.length !== 2 || !(env[0] instanceof Uint8Array) || !(env[1] instanceof Uint8Array)) throw new Error('malformed envelope')
  const [body, sig] = env
  if (sig.length !== 64) throw new Error('bad signature length')
  const ad = decode(body, CBOR_OPTS)
  if (ad.v !== 1) throw new Error('unsupported version')
  const peer = ad.peer
  if (!(peer instanceof Uint8Array) || peer.length !== 38 || !PEER_PREFIX.every((b, i) => peer[i] === b)) throw new Error('peer is not an ed25519 peer id')
  if (!ed25519.verify(sig, concat(DOMAIN, body), peer.slice(6))) throw new Error('bad signature')
  if (!(Number(ad.exp) > Number(ad.iat))) throw new Error('exp not after iat')
  return { ...ad, peer: base58btc.baseEncode(peer) }
}

const privateKey = await generateKeyPair('Ed25519')
const node = await createLibp2p({
  privateKey,
  addresses: { listen: [process.env.P2P_LISTEN || '/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  // js-libp2p limits inbound connections per IP to 5/s by default, which resets dials in a
  // loopback swarm where every peer is 127.0.0.1.
  connectionManager: { inboundConnectionThreshold: 1000, maxIncomingPendingConnections: 100 },
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, emitSelf: false, heartbeatInterval: 1000 })
  }
})
const pubsub = node.services.pubsub
pubsub.subscribe(TOPIC)

// libp2p's perf protocol, server side (specs: perf/perf.md), when asked for (P2P_PERF=1): the
// client sends the bytes it wants back (u64, big-endian), uploads, and closes its side; we read to
// the end, send what it asked for, and close. For throughput figures side by side with p2pnode.
if (process.env.P2P_PERF) {
  await node.handle('/perf/1.0.0', async (stream) => {
    let header = new Uint8Array(0)
    for await (const buf of stream) {
      if (header.length < 8) header = concat(header, buf.subarray().slice(0, 8 - header.length))
    }
    let left = new DataView(header.buffer, header.byteOffset, 8).getBigUint64(0)
    const block = new Uint8Array(1 << 20)
    while (left > 0n) {
      const n = left < BigInt(block.length) ? Number(left) : block.length
      if (!stream.send(block.subarray(0, n))) await stream.onDrain()
      left -= BigInt(n)
    }
    await stream.close()
  }, { maxInboundStreams: 4, runOnLimitedConnection: false })
}

pubsub.addEventListener('message', (evt) => {
  const msg = evt.detail
  if (msg.topic !== TOPIC) return
  const recvMs = Date.now()
  try {
    const ad = verifyAd(msg.data)
    emit({ event: 'ad', from: msg.from?.toString(), peer: ad.peer, seq: String(ad.seq), iat: Number(ad.iat), recv_ms: recvMs, verified: true, gpus: ad.gpus.length, cores: ad.cpu.cores, offers: ad.offers.map(o => o.wl) })
  } catch (err) {
    emit({ event: 'ad', from: msg.from?.toString(), verified: false, error: String(err.message || err), recv_ms: recvMs })
  }
})
node.addEventListener('peer:identify', (evt) => {
  const d = evt.detail
  emit({ event: 'identify', peer: d.peerId.toString(), protocols: d.protocols, addrs: d.listenAddrs.map(a => a.toString()) })
})
node.addEventListener('peer:disconnect', (evt) => emit({ event: 'disconnect', peer: evt.detail.toString() }))

async function adOfMine (seq, ttlMs) {
  const now = Date.now()
  const peerBytes = concat(PEER_PREFIX, privateKey.publicKey.raw)
  const body = encode({
    v: 1, peer: peerBytes, seq, iat: now, exp: now + ttlMs, addrs: node.getMultiaddrs().map(a => a.toString()).slice(0, 8),
    cpu: { model: 'js-libp2p peer', cores: 1, mem_total: 1024, mem_free: 512 },
    gpus: [], offers: [{ wl: 'matmul', backend: 'numpy', price: 5, unit: 'gflop' }], speed: {}, load: 0
  })
  const sig = await privateKey.sign(concat(DOMAIN, body))
  return encode([body, sig])
}

async function handle (cmd) {
  switch (cmd.cmd) {
    case 'dial': {
      const t0 = performance.now()
      const conn = await node.dial(multiaddr(cmd.addr))
      return { event: 'dialed', peer: conn.remotePeer.toString(), ms: performance.now() - t0 }
    }
    case 'perf': {
      // libp2p's perf protocol, client side: ask the peer for cmd.bytes, upload none
      const stream = await node.dialProtocol(peerIdFromString(cmd.peer), '/perf/1.0.0')
      const header = new Uint8Array(8)
      new DataView(header.buffer).setBigUint64(0, BigInt(cmd.bytes))
      const t0 = performance.now()
      stream.send(header)
      await stream.close() // our side: the upload is empty
      let got = 0
      for await (const buf of stream) got += buf.byteLength
      return { event: 'perf', bytes: got, ms: performance.now() - t0 }
    }
    case 'ping': {
      const rtts = []
      for (let i = 0; i < (cmd.count || 1); i++) rtts.push(await node.services.ping.ping(peerIdFromString(cmd.peer)))
      return { event: 'ping', rtts }
    }
    case 'publish': {
      const r = await pubsub.publish(TOPIC, Uint8Array.from(Buffer.from(cmd.hex, 'hex')))
      return { event: 'published', recipients: r.recipients.length }
    }
    case 'publish_ad': {
      const r = await pubsub.publish(TOPIC, await adOfMine(cmd.seq ?? Date.now(), cmd.ttl_ms ?? 30000))
      return { event: 'published', recipients: r.recipients.length }
    }
    case 'identify': {
      const p = await node.peerStore.get(peerIdFromString(cmd.peer))
      return { event: 'identified', protocols: p.protocols, addrs: p.addresses.map(a => a.multiaddr.toString()) }
    }
    case 'peers': return { event: 'peers', peers: node.getPeers().map(p => p.toString()) }
    case 'mesh': return { event: 'mesh', topic_peers: pubsub.getSubscribers(TOPIC).map(p => p.toString()), mesh: pubsub.getMeshPeers ? pubsub.getMeshPeers(TOPIC).map(String) : [] }
    default: throw new Error(`unknown command ${cmd.cmd}`)
  }
}

for (const addr of (process.env.P2P_DIAL || '').split(',').filter(Boolean)) await node.dial(multiaddr(addr))
emit({ event: 'ready', peer: node.peerId.toString(), addrs: node.getMultiaddrs().map(a => a.toString()) })

const rl = createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  let cmd
  try { cmd = JSON.parse(line) } catch { emit({ event: 'error', error: 'bad json' }); return }
  if (cmd.cmd === 'stop') {
    await node.stop()
    emit({ id: cmd.id, event: 'stopped' })
    process.exit(0)
  }
  try { emit({ id: cmd.id, ...(await handle(cmd)) }) } catch (err) { emit({ id: cmd.id, event: 'error', error: String(err.message || err) }) }
})
rl.on('close', async () => { await node.stop(); process.exit(0) })
