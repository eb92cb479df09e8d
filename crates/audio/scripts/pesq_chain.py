#!/usr/bin/env python3
"""Wideband PESQ of tincan's offline audio chain at several loss rates.

Runs `tincan_audio test` (the same code as `tincan audio test`) on a speech
file at each loss rate and seed, and scores what the listener hears against
the input with wideband PESQ (ITU-T P.862.2, the PyPI package `pesq`).

Needs: python3 with `pip install pesq numpy scipy`, and espeak-ng + sox when
no --speech file is given (the default speech is synthesised by espeak-ng).

    python3 crates/audio/scripts/pesq_chain.py                 # 0/2/5/10 % loss, 20 ms jitter
    python3 crates/audio/scripts/pesq_chain.py --frame 20ms --bitrate 24 --jitter 0ms
"""

import argparse
import os
import subprocess
import sys
import tempfile
import wave

import numpy as np
from pesq import pesq
from scipy.signal import resample_poly

TEXT = (
    "The quick brown fox jumps over the lazy dog. Voice chat for gamers needs low delay, "
    "and it must survive packet loss without sounding robotic. Testing one two three, "
    "testing the jitter buffer and the forward error correction of Opus."
)


def read_wav(path):
    with wave.open(path, "rb") as w:
        assert w.getsampwidth() == 2, "16-bit WAV expected"
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels()).mean(axis=1)
    return rate, data / 32768.0


def to_16k(rate, data):
    g = np.gcd(rate, 16000)
    return resample_poly(data, 16000 // g, rate // g)


def align(ref, deg):
    """Shifts deg so that it lines up with ref (the chain adds delay)."""
    n = min(len(ref), len(deg))
    spectrum = np.fft.rfft(deg[:n], 2 * n) * np.conj(np.fft.rfft(ref[:n], 2 * n))
    corr = np.fft.irfft(spectrum)
    lag = int(np.argmax(corr[: n // 2]))  # deg lags ref
    shifted = deg[lag : lag + len(ref)]
    return np.pad(shifted, (0, len(ref) - len(shifted))), lag


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech", help="speech WAV (default: synthesised by espeak-ng)")
    parser.add_argument("--losses", default="0,2,5,10", help="loss percentages")
    parser.add_argument("--seeds", default="1,2,3", help="link seeds to average over")
    parser.add_argument("--jitter", default="20ms")
    parser.add_argument("--frame", default="10ms")
    parser.add_argument("--bitrate", default="32", help="kbit/s")
    parser.add_argument("--extra", default="", help="more options for `tincan_audio test`")
    args = parser.parse_args()

    root = os.path.dirname(os.path.abspath(__file__))
    crate = os.path.dirname(root)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(crate, "..", "..", "target"))
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "tincan-audio", "--features", "cli", "--example", "tincan_audio"],
        check=True,
        cwd=crate,
    )
    binary = os.path.join(target, "release", "examples", "tincan_audio")

    work = tempfile.mkdtemp(prefix="tincan-pesq-")
    speech = args.speech
    if speech is None:
        raw = os.path.join(work, "speech_raw.wav")
        speech = os.path.join(work, "speech.wav")
        subprocess.run(["espeak-ng", "-w", raw, TEXT], check=True)
        subprocess.run(["sox", raw, "-r", "48000", "-c", "1", "-b", "16", speech], check=True)

    rate, ref = read_wav(speech)
    ref16 = to_16k(rate, ref)
    print(f"speech: {speech} ({len(ref) / rate:.1f} s); jitter {args.jitter}, frame {args.frame}, "
          f"{args.bitrate} kbps, seeds {args.seeds}")
    print(f"{'loss %':>6}  {'PESQ-WB':>7}  {'min':>5}  {'max':>5}  {'lost':>5}  {'RED':>4}  {'FEC':>4}  {'PLC':>4}  {'delay ms':>8}")
    for loss in args.losses.split(","):
        scores, lost, red, fec, plc, delay = [], 0, 0, 0, 0, []
        for seed in args.seeds.split(","):
            heard = os.path.join(work, f"heard_{loss}_{seed}.wav")
            out = subprocess.run(
                [binary, "test", "--in", speech, "--out", heard, "--loss", loss, "--jitter", args.jitter,
                 "--frame", args.frame, "--bitrate", args.bitrate, "--seed", seed] + args.extra.split(),
                check=True, capture_output=True, text=True,
            ).stdout
            for line in out.splitlines():
                if line.startswith("frames:"):
                    # "... N lost (x%): R recovered by redundancy, F recovered by FEC, C concealed; ..."
                    text = line.replace(",", "").replace(";", "")
                    lost += int(text.split(" lost")[0].split()[-1])
                    red += int(text.split(" recovered by redundancy")[0].split()[-1])
                    fec += int(text.split(" recovered by FEC")[0].split()[-1])
                    plc += int(text.split(" concealed")[0].split()[-1])
                if line.startswith("delay:"):
                    delay.append(float(line.split("jitter buffer ")[1].split(" ms")[0]))
            deg_rate, deg = read_wav(heard)
            deg16, _ = align(ref16, to_16k(deg_rate, deg))
            scores.append(pesq(16000, ref16, deg16, "wb"))
        print(f"{loss:>6}  {np.mean(scores):7.2f}  {min(scores):5.2f}  {max(scores):5.2f}  {lost:5d}  {red:4d}  {fec:4d}  "
                      f"{plc:4d}  {np.mean(delay):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
