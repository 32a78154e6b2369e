#!/usr/bin/env bash
# Regenerates the default voice prompts: 8 kHz mono A-law WAV (the format the voice
# adapter plays without conversion). Needs espeak-ng and sox
# (Debian: apt-get install espeak-ng sox). Run from anywhere:
#   bash config/prompts/make-prompts.sh
set -euo pipefail
cd "$(dirname "$0")"

say() { # name text
  local name=$1; shift
  espeak-ng -v en-us -s 160 -w "/tmp/prompt-$$.wav" "$*"
  sox "/tmp/prompt-$$.wav" -r 8000 -c 1 -e a-law -b 8 "$name.wav" norm -3
  rm -f "/tmp/prompt-$$.wav"
}

say welcome "Thank you for calling."
say menu-language "For English, press 1. Para español, marque 2."
say menu "For sales, press 1. For support, press 2."
say invalid "Sorry, that is not a valid choice."
say no-input "Sorry, I did not hear your choice."
say goodbye "Thank you for calling. Goodbye."
say after-hours "Our office is closed. Please leave a message after the tone."
say technical-difficulties "We are experiencing technical difficulties. Please call again later."
say please-hold "Please hold, the next available agent will be with you shortly."
say position "You are caller number"
say estimated-wait "Your estimated waiting time is"
say minute "minute"
say minutes "minutes"
say many "many"
for n in $(seq 0 20) 30 40 50 60 70 80 90; do
  say "$n" "$n"
done

# Music on hold: a soft arpeggio loop (no third-party recording to license).
notes=()
for f in 523.25 659.25 783.99 659.25; do
  sox -n -r 8000 -c 1 "/tmp/note-$$-$f.wav" synth 0.45 sine "$f" fade 0.03 0.45 0.15 vol 0.25
  notes+=("/tmp/note-$$-$f.wav")
done
sox "${notes[@]}" -e a-law -b 8 music-on-hold.wav repeat 3
rm -f "${notes[@]}"
echo "prompts: $(ls ./*.wav | wc -l) files, $(du -ch ./*.wav | tail -1 | cut -f1) total"
