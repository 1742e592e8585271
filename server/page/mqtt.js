// A subscribe-only MQTT 3.1.1 client over WebSocket, written from the specification (OASIS MQTT 3.1.1, and
// its section 6 on WebSocket): CONNECT with a clean session, SUBSCRIBE at QoS 1, PUBLISH received at QoS 0 or 1
// (PUBACK for 1), PINGREQ to keep the connection alive, and reconnection with back-off. It publishes nothing.
// A library would be ten times its size, and the viewer page loads no third-party code.
//
//   const client = new MqttClient("ws://broker:9001", { onMessage(topic, payload, { qos, retain }) {},
//                                                       onState(state) {}, username, password });
//   client.subscribe(["captioner/room/final", ...]);  // (re)sent after every CONNACK: the session is clean
"use strict";

(() => {
  const KEEPALIVE_S = 30;
  const TIMEOUT_PING_MS = 10_000; // no PINGRESP (or CONNACK) this long after asking: the connection is dead
  const RECONNECT_MIN_MS = 1_000;
  const RECONNECT_MAX_MS = 30_000;
  // Control packet types (the high nibble of the first byte).
  const CONNECT = 1, CONNACK = 2, PUBLISH = 3, PUBACK = 4, SUBSCRIBE = 8, SUBACK = 9, PINGREQ = 12, PINGRESP = 13;
  const SERVER_UNAVAILABLE = 3; // a CONNACK return code
  const REFUSALS = { 1: "refused: protocol version", 2: "refused: client identifier",
                     4: "refused: user name or password", 5: "refused: not authorised" };
  const encoder = new TextEncoder();

  // A UTF-8 string as MQTT writes it: a two-byte big-endian length, then the bytes.
  function string(text) {
    const bytes = encoder.encode(text);
    return [bytes.length >> 8, bytes.length & 0xff, ...bytes];
  }

  // The fixed header (type, flags, remaining length as a base-128 varint) in front of the rest of a packet.
  function packet(type, flags, body) {
    const header = [(type << 4) | flags];
    let length = body.length;
    do {
      header.push((length & 0x7f) | (length > 0x7f ? 0x80 : 0));
      length >>= 7;
    } while (length > 0);
    return new Uint8Array([...header, ...body]);
  }

  class MqttClient {
    constructor(url, { username = "", password = "", keepalive_s = KEEPALIVE_S, onMessage = () => {},
                       onState = () => {} } = {}) {
      Object.assign(this, { url, username, password, keepalive_s, onMessage, onState });
      // A clean session needs no stable id; a random one keeps two viewers from taking over each other's.
      this.clientId = `captioner-watch-${Math.random().toString(36).slice(2, 12)}`;
      this.filters = [];
      this.nextId = 1;
      this.retries = 0;
      this.closed = false;
      this.open();
    }

    subscribe(filters) {
      this.filters.push(...filters);
      if (this.connected) this.sendSubscribe(filters);
    }

    close(state = "closed") {
      this.closed = true;
      clearTimeout(this.retry);
      this.stop();
      this.onState(state);
    }

    open() {
      this.connected = false;
      this.buffer = new Uint8Array(0);
      this.onState(this.retries ? "reconnecting" : "connecting");
      const socket = (this.socket = new WebSocket(this.url, "mqtt"));
      socket.binaryType = "arraybuffer";
      socket.onopen = () => this.sendConnect();
      socket.onmessage = (event) => this.receive(new Uint8Array(event.data));
      socket.onclose = () => this.lost();
      this.deadline = setTimeout(() => this.lost(), TIMEOUT_PING_MS); // cleared by CONNACK
    }

    stop() {
      clearInterval(this.pinger);
      clearTimeout(this.deadline);
      if (this.socket) {
        this.socket.onclose = this.socket.onmessage = null; // whatever it still says belongs to the past
        this.socket.close();
        this.socket = null;
      }
    }

    lost() {
      this.stop();
      if (this.closed) return;
      // Exponential back-off with jitter, so that a broker restart is not met by every viewer at once.
      const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** this.retries) * (0.5 + Math.random() / 2);
      this.retries += 1;
      this.onState("reconnecting");
      this.retry = setTimeout(() => this.open(), delay);
    }

    send(bytes) {
      if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(bytes);
    }

    sendConnect() {
      let flags = 0x02; // clean session
      const payload = string(this.clientId);
      if (this.username) { flags |= 0x80; payload.push(...string(this.username)); }
      if (this.password) { flags |= 0x40; payload.push(...string(this.password)); }
      const keepalive = [this.keepalive_s >> 8, this.keepalive_s & 0xff];
      this.send(packet(CONNECT, 0, [...string("MQTT"), 4, flags, ...keepalive, ...payload]));
    }

    sendSubscribe(filters) {
      if (!filters.length) return;
      const id = this.nextId;
      this.nextId = (this.nextId % 0xffff) + 1; // packet ids are 1..65535
      const body = [id >> 8, id & 0xff];
      for (const filter of filters) body.push(...string(filter), 1); // maximum QoS 1
      this.send(packet(SUBSCRIBE, 0x02, body)); // SUBSCRIBE's reserved flags are 0010
    }

    // A WebSocket message may hold part of a packet, or several: buffer, then take whole packets off the front.
    receive(bytes) {
      const joined = new Uint8Array(this.buffer.length + bytes.length);
      joined.set(this.buffer);
      joined.set(bytes, this.buffer.length);
      let offset = 0;
      while (true) {
        let length = 0, shift = 0, at = offset + 1, byte;
        do {
          if (at >= joined.length) break;
          byte = joined[at++];
          length += (byte & 0x7f) << shift;
          shift += 7;
        } while (byte & 0x80);
        if (byte === undefined || byte & 0x80 || at + length > joined.length) break; // incomplete
        this.handle(joined[offset] >> 4, joined[offset] & 0x0f, joined.subarray(at, at + length));
        offset = at + length;
      }
      this.buffer = joined.slice(offset);
    }

    handle(type, flags, body) {
      if (type === CONNACK) {
        clearTimeout(this.deadline);
        if (body[1] !== 0) { // the broker closes the connection; only "server unavailable" is worth a retry
          if (body[1] !== SERVER_UNAVAILABLE) this.close(REFUSALS[body[1]] || `refused (${body[1]})`);
          return;
        }
        this.connected = true;
        this.retries = 0;
        this.onState("connected");
        this.sendSubscribe(this.filters);
        this.pinger = setInterval(() => this.ping(), (this.keepalive_s * 1000) / 2);
      } else if (type === PUBLISH) {
        const qos = (flags >> 1) & 0x03;
        const length = (body[0] << 8) | body[1];
        const topic = new TextDecoder().decode(body.subarray(2, 2 + length));
        let at = 2 + length;
        if (qos > 0) {
          this.send(packet(PUBACK, 0, [body[at], body[at + 1]])); // at least once: acknowledge
          at += 2;
        }
        this.onMessage(topic, body.slice(at), { qos, retain: (flags & 0x01) === 1 });
      } else if (type === PINGRESP) {
        clearTimeout(this.deadline);
      } else if (type === SUBACK && body.subarray(2).includes(0x80)) {
        this.onState("subscription refused");
      }
    }

    // Half the keep-alive period: the broker drops a client it hears nothing from for 1.5 times the period.
    ping() {
      this.send(packet(PINGREQ, 0, []));
      clearTimeout(this.deadline);
      // A dead network may take minutes to close a socket: give up on it now.
      this.deadline = setTimeout(() => this.lost(), TIMEOUT_PING_MS);
    }
  }

  globalThis.MqttClient = MqttClient;
})();
