// Test fixture: the real TypeScript puppet-service server (`wechaty-puppet-service`) around
// `wechaty-puppet-mock`, bound to 127.0.0.1 with TLS off. Driven by the Python tests through
// JSON lines on stdin; reports through JSON lines on stdout:
//   in:  {"cmd":"say","id","from","room"?,"text","mentions"?}   a user sends a text
//        {"cmd":"image","id","from","room"?,"b64","name"}         a user sends an image
//        {"cmd":"repeat","id"}                                   the same message event again
//        {"cmd":"quit"}
//   out: {"event":"ready","port"} · {"event":"login"} · {"event":"sent_text",...} · {"event":"sent_file",...}
// Usage: node server.mjs <port> <token>
import { createHash } from 'node:crypto'
import readline from 'node:readline'

import { FileBox } from 'file-box'
import * as PUPPET from 'wechaty-puppet'
import { PuppetMock, mock } from 'wechaty-puppet-mock'
import { PuppetServer } from 'wechaty-puppet-service'

const [port, token] = process.argv.slice(2)
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const BOT = 'bot-self'
const mocker = new mock.Mocker()
const bot = mocker.createContact({ id: BOT, name: '小爱' })
mocker.createContact({ id: 'u-alice', name: 'Alice' })
mocker.createContact({ id: 'u-bob', name: 'Bob' })
mocker.createRoom({ id: 'r-1@chatroom', topic: '视频测试群', memberIdList: [BOT, 'u-alice', 'u-bob'] })

// Metadata as sent, with any base64 payload replaced by its decoded length and sha256.
function summarise (value) {
  if (Array.isArray(value)) return value.map(summarise)
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => {
      if (k === 'base64' && typeof v === 'string') {
        const buf = Buffer.from(v, 'base64')
        return ['base64', { bytes: buf.length, sha256: createHash('sha256').update(buf).digest('hex') }]
      }
      return [k, summarise(v)]
    }))
  }
  return value
}

class RecordingPuppet extends PuppetMock {
  async onStart () {
    await super.onStart()
    // The python client sends Stop (which logs the mock out) before Start: log in again.
    setTimeout(() => { if (!this.isLoggedIn) { mocker.login(bot); out({ event: 'login' }) } }, 20)
  }

  async messageImage (messageId, _imageType) {
    const json = this.mocker.cacheFileBoxPayload.get(messageId)
    if (!json) throw new Error('no image for ' + messageId)
    return FileBox.fromJSON(json)
  }

  async messageSendText (conversationId, text, mentionIdList) {
    out({ event: 'sent_text', conversationId, text, mentionIdList: mentionIdList || [] })
    return super.messageSendText(conversationId, text, mentionIdList)
  }

  async messageSendFile (conversationId, fileBox) {
    const buf = await fileBox.toBuffer()
    out({
      event: 'sent_file',
      conversationId,
      name: fileBox.name,
      size: buf.length,
      sha256: createHash('sha256').update(buf).digest('hex'),
      boxType: fileBox.type,
      mediaType: fileBox.mediaType,
      metadata: summarise(fileBox.metadata),
    })
    return super.messageSendFile(conversationId, fileBox)
  }
}

const puppet = new RecordingPuppet({ mocker })
const server = new PuppetServer({
  endpoint: `127.0.0.1:${port}`,
  puppet,
  token,
  tls: { disable: true },
})

function deliver (cmd, extra) {
  const payload = {
    id: cmd.id,
    talkerId: cmd.from,
    timestamp: Date.now(),
    ...(cmd.room ? { roomId: cmd.room, mentionIdList: cmd.mentions || [] } : { listenerId: BOT }),
    ...extra,
  }
  mocker.MessageMock.create(payload)
  puppet.emit('message', { messageId: cmd.id })
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  if (!line.trim()) return
  const cmd = JSON.parse(line)
  try {
    if (cmd.cmd === 'say') {
      deliver(cmd, { type: PUPPET.types.Message.Text, text: cmd.text })
    } else if (cmd.cmd === 'image') {
      mocker.cacheFileBoxPayload.set(cmd.id, FileBox.fromBase64(cmd.b64, cmd.name).toJSON())
      deliver(cmd, { type: PUPPET.types.Message.Image })
    } else if (cmd.cmd === 'repeat') {
      puppet.emit('message', { messageId: cmd.id })
    } else if (cmd.cmd === 'quit') {
      await server.stop()
      process.exit(0)
    }
    out({ event: 'ack', id: cmd.id || null, cmd: cmd.cmd })
  } catch (e) {
    out({ event: 'error', cmd: cmd.cmd, message: String(e && e.message) })
  }
})

await server.start()
out({ event: 'ready', port: Number(port) })
