// AudioWorklet: the microphone's samples mixed to mono, resampled to 16 kHz by linear
// interpolation, packed as 16-bit PCM and posted to the page in 100 ms frames.
class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / 16000; // input samples per output sample
    this.last = 0; // the previous block's last sample, so that interpolation spans blocks
    this.position = 1; // the next output sample, in samples of [last, ...block]
    this.frame = new Int16Array(1600);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || !input[0]) return true;
    const n = input[0].length;
    const mono = new Float32Array(n + 1);
    mono[0] = this.last;
    for (const channel of input) for (let i = 0; i < n; i++) mono[i + 1] += channel[i] / input.length;
    while (this.position < n) {
      const i = Math.floor(this.position);
      const t = this.position - i;
      const value = Math.max(-1, Math.min(1, mono[i] * (1 - t) + mono[i + 1] * t));
      this.frame[this.filled++] = value < 0 ? value * 32768 : value * 32767;
      if (this.filled === this.frame.length) {
        this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
        this.frame = new Int16Array(1600);
        this.filled = 0;
      }
      this.position += this.step;
    }
    this.position -= n;
    this.last = mono[n];
    return true;
  }
}

registerProcessor("capture", Capture);
