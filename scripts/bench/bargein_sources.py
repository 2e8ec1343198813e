"""Everyday recordings for `splitrelay bench bargein`, from Debian and PyPI packages (issue 18).

The desktop sounds of alsa-utils and sound-theme-freedesktop are mostly synthetic: bells and tones. The noises
behind false interruptions are coughs, keyboards, doors, dishes, pets, crowds and a television. No package
ships a labelled set of those, so this catalogue names, per category, the files of the packages that do ship
recordings of them (``SOURCES``), found under a folder where the packages were unpacked (``--noise ROOT``):

    apt-get download bucklespring-data hedgewars-data tuxpaint-data tuxpaint-stamps-default \\
        openttd-opensfx lincity-ng-data minetest-data
    for f in *.deb; do dpkg-deb -x "$f" root; done
    pip download --no-deps pygame pyannote.audio
    unzip -q -d root pygame-*.whl 'pygame/examples/data/*'
    unzip -q -d root pyannote_audio-*.whl 'pyannote/audio/sample/*'

Installed packages work too: ``--noise /`` (Debian) and ``--noise <site-packages>`` (PyPI). Any other folder
of recordings joins as ``--noise CATEGORY=DIR`` (every audio file under DIR, labelled CATEGORY).

One source is speech, not noise: pyannote.audio's sample telephone call, cut into speaker turns by its
transcript, adds conversational speech onsets to the read channel names of ``--sounds``.

Two sources are arranged by us from recordings, and named so: "keyboard typing" plays bucklespring's
recorded key-press and key-release clips of an IBM Model M as bucklespring itself does while one types (a
press, a release 60-110 ms later, the next key 110-260 ms on, seeded); music plays a 4 s excerpt of each
track from 30 s on. Every clip is cut to ``MAX_CLIP_S``.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUDIO_SUFFIXES = (".wav", ".ogg", ".oga", ".flac", ".mp3")
MAX_CLIP_S = 4.0
RATE = 48_000
TYPING_BURSTS = 8
TYPING_KEYS = 10  # keystrokes per burst: a word or two


@dataclass(frozen=True)
class Source:
    """Files of one package that hold recordings of one category."""

    category: str
    package: str  # "deb:NAME" or "pypi:NAME": where to get the files
    patterns: tuple[
        str, ...
    ]  # globs under the unpack root; "FILE#TITLE" is the entry TITLE of an OpenTTD .cat
    exclude: tuple[str, ...] = ()  # substrings of the path that leave a file out
    start_s: float = 0.0  # excerpt start (music)
    typing: bool = False  # key-press clips played as typing bursts
    speech: bool = False  # speech, cut into turns by the transcript beside it (FILE.stm)
    note: str = ""  # provenance, for the report


HW = "usr/share/games/hedgewars/Data"
TP = "usr/share/tuxpaint/stamps"
SFX = "usr/share/games/openttd/baseset/opensfx/opensfx.cat"
LC = "usr/share/games/lincity-ng/sounds"
MT = "usr/share/games/minetest/games/minetest_game/mods"

SOURCES: tuple[Source, ...] = (
    Source(
        "speech: telephone conversation",
        "pypi:pyannote.audio",
        ("pyannote/audio/sample/sample.wav",),
        speech=True,
        note="pyannote.audio's 30 s sample: two women meeting on a recorded phone call, with its transcript "
        "(sample.stm); origin not stated in the package (MIT)",
    ),
    Source(
        "keyboard typing",
        "deb:bucklespring-data",
        ("usr/share/buckle/wav/*-0.wav",),
        typing=True,
        note="key press/release recordings of an IBM Model M (Ico Doornekamp, GPL-2+), played as typing",
    ),
    Source(
        "keyboard, one key",
        "deb:bucklespring-data",
        ("usr/share/buckle/wav/2?-0.wav",),
        note="one recorded key press each",
    ),
    Source(
        "cough (acted)",
        "deb:hedgewars-data",
        (f"{HW}/Sounds/voices/*/PoisonCough.ogg",),
        note="the voice packs' coughs, performed by their voice actors (GFDL-1.3)",
    ),
    Source(
        "laugh (acted, vocal)",
        "deb:hedgewars-data",
        (f"{HW}/Sounds/voices/*/Laugh.ogg",),
        exclude=("/Robot/",),  # a synthetic voice
        note="the voice packs' laughs (GFDL-1.3); tuxpaint-data's giggle",
    ),
    Source("laugh (acted, vocal)", "deb:tuxpaint-data", ("usr/share/tuxpaint/sounds/giggle.wav",)),
    Source(
        "footsteps",
        "deb:minetest-data",
        (f"{MT}/default/sounds/default_*_footstep*.ogg",),
        note="single steps on hard floor, wood, metal, gravel, grass, sand, snow...: freesound.org "
        "recordings (CC0 / CC BY 3.0, itemised in the mod's README)",
    ),
    Source("footsteps", "deb:hedgewars-data", (f"{HW}/Sounds/steps.ogg",)),
    Source(
        "door",
        "deb:minetest-data",
        (f"{MT}/doors/sounds/doors_*.ogg",),
        note="wooden, steel and glass doors and a gate opening and closing: freesound.org recordings "
        "(CC BY 3.0 / CC0, itemised in the mod's README)",
    ),
    Source(
        "door",
        "pypi:pygame",
        ("pygame/examples/data/car_door.wav",),
        note="a car door shut, pygame's example data (author not stated)",
    ),
    Source(
        "dishes, kitchen",
        "deb:tuxpaint-stamps-default",
        (f"{TP}/household/dishes/*.ogg", f"{TP}/household/kettle.ogg"),
        exclude=("_desc",),  # a stamp's spoken description
        note="glass, bottle, kettle: recorded for Tux Paint by Caroline Ford (GFDL)",
    ),
    Source(
        "dishes, kitchen",
        "deb:minetest-data",
        (f"{MT}/default/sounds/default_break_glass.*.ogg",),
        note="glass breaking, freesound.org recordings (CC BY 3.0)",
    ),
    Source(
        "household: appliances, tools",
        "deb:tuxpaint-stamps-default",
        (
            f"{TP}/household/Washing-machine.ogg",
            f"{TP}/household/vacuum_cleaner.ogg",
            f"{TP}/household/toilet.ogg",
            f"{TP}/household/tools/*.ogg",
            f"{TP}/household/arttools/*.ogg",
        ),
        exclude=("_desc",),
        note="washing machine, vacuum cleaner (Caroline Ford, GFDL), toilet, hammer, saw, scissors",
    ),
    Source(
        "household: appliances, tools",
        "deb:openttd-opensfx",
        (f'{SFX}#"Cash till"', f'{SFX}#"Jackhammer"', f'{SFX}#"Lumber mill: Chainsaw"'),
    ),
    Source(
        "dog, cat, birds",
        "deb:tuxpaint-stamps-default",
        (
            f"{TP}/animals/mammals/dogs/dog.ogg",
            f"{TP}/seasonal/halloween/blackcat.ogg",
            f"{TP}/animals/birds/blackbird.ogg",
            f"{TP}/animals/birds/crow.ogg",
            f"{TP}/animals/birds/hen.ogg",
            f"{TP}/animals/birds/rooster.ogg",
        ),
        note="Tux Paint stamp sounds (GPL; authors not itemised per sound)",
    ),
    Source("dog, cat, birds", "deb:openttd-opensfx", (f'{SFX}#"Tropical: Bird (1)"',)),
    Source(
        "crowd, applause",
        "deb:openttd-opensfx",
        (f'{SFX}#"Applause"', f'{SFX}#"Oooh sound"'),
        note="OpenSFX (CC BY-SA 3.0): an audience of about 850 from freesound.org, a crowd's 'oooh'",
    ),
    Source(
        "crowd, applause",
        "deb:lincity-ng-data",
        (f"{LC}/SportsCroud*.wav", f"{LC}/MarketFull1.wav", f"{LC}/MarketMed1.wav"),
        note="LinCity-NG's stadium and market ambience (GPL-2+ / CC BY-SA 2.0)",
    ),
    Source(
        "street, traffic",
        "deb:openttd-opensfx",
        (f'{SFX}#"Modern car horn"', f'{SFX}#"Modern bus start"', f'{SFX}#"Level crossing"'),
        note="OpenSFX, edited freesound.org field recordings (CC BY 3.0 / CC0)",
    ),
    Source("street, traffic", "deb:lincity-ng-data", (f"{LC}/Trafic*.wav",)),
    Source(
        "music (television stand-in)",
        "deb:hedgewars-data",
        (f"{HW}/Music/*.ogg",),
        start_s=30.0,
        note="Hedgewars' soundtrack, 4 s from 30 s in; instrumental: a TV's music, not its dialogue",
    ),
)


@dataclass(frozen=True)
class Clip:
    """One non-speech (or speech) trial source: a file, a .cat entry, or a typing burst of key clips."""

    name: str
    category: str
    package: str
    path: Path
    speech: bool = False
    member: str | None = None  # the .cat entry's title
    start_s: float = 0.0
    length_s: float = MAX_CLIP_S
    keys: tuple[Path, ...] = field(default=())  # typing: key-press clips (the release is the "-1" file)
    seed: int = 0


def parse_noise(spec: str) -> tuple[str | None, Path]:
    """``--noise``: ``ROOT`` (unpacked packages, read through the catalogue) or ``CATEGORY=DIR``."""
    category, sep, folder = spec.partition("=")
    if not sep:
        return None, Path(spec)
    if not category.strip() or not folder:
        raise ValueError(f"--noise {spec!r}: expected ROOT or CATEGORY=DIR")
    return category.strip(), Path(folder)


def cat_titles(path: Path) -> list[tuple[str, int, int]]:
    """The entries of an OpenTTD .cat sound pack: (title, offset of the WAV, its size)."""
    data = path.read_bytes()
    count = (struct.unpack_from("<I", data, 0)[0] & 0x7FFFFFFF) // 8
    entries = []
    for i in range(count):
        offset, size = struct.unpack_from("<II", data, i * 8)
        offset &= 0x7FFFFFFF
        length = data[offset]
        title = data[offset + 1 : offset + 1 + length].rstrip(b"\0").decode("latin-1")
        entries.append((title, offset + 1 + length, size - 1 - length))
    return entries


def _cat_member(path: Path, prefix: str) -> bytes | None:
    for title, offset, size in cat_titles(path):
        if title.startswith(prefix):
            with path.open("rb") as f:
                f.seek(offset)
                return f.read(size)
    return None


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _files(root: Path, pattern: str, exclude: Sequence[str]) -> list[Path]:
    """Regular, non-empty files (a theme's symlinks repeat others), sorted."""
    return sorted(
        p
        for p in root.glob(pattern)
        if p.is_file() and not p.is_symlink() and p.stat().st_size and not any(x in str(p) for x in exclude)
    )


def catalogue_clips(root: Path, sources: Iterable[Source] = SOURCES) -> list[Clip]:
    """The catalogue's clips found under ``root``; byte-identical files count once in a category."""
    clips: list[Clip] = []
    seen: set[str] = set()
    for src in sources:
        for pattern in src.patterns:
            if "#" in pattern:
                cat, title = pattern.split("#", 1)
                if (root / cat).is_file() and _cat_member(root / cat, title) is not None:
                    name = f"{Path(cat).stem}:{title.strip(chr(34))}"
                    clips.append(Clip(name, src.category, src.package, root / cat, member=title))
                continue
            found = _files(root, pattern, src.exclude)
            if src.speech:
                for p in found:
                    clips += [
                        Clip(
                            f"{p.name}@{start:.1f}s {who}",
                            src.category,
                            src.package,
                            p,
                            True,
                            None,
                            start,
                            end - start,
                        )
                        for who, start, end in turns(p.with_suffix(".stm"))
                    ]
                continue
            if src.typing:
                keys = tuple(p for p in found if p.with_name(p.name.replace("-0.", "-1.")).is_file())
                if keys:
                    clips += [
                        Clip(f"typing burst {b + 1}", src.category, src.package, keys[0], keys=keys, seed=b)
                        for b in range(TYPING_BURSTS)
                    ]
                continue
            for p in found:
                if (key := f"{src.category}:{_digest(p)}") in seen:
                    continue
                seen.add(key)
                name = f"{p.parent.name}/{p.name}"
                clips.append(Clip(name, src.category, src.package, p, start_s=src.start_s))
    return clips


def turns(stm: Path, gap_s: float = 0.3) -> list[tuple[str, float, float]]:
    """Speaker turns from an NIST STM transcript ("uri channel speaker start end words..."): a speaker's
    utterances less than ``gap_s`` apart join into one turn, whose start is a barge-in's speech onset."""
    merged: list[tuple[str, float, float]] = []
    for line in stm.read_text().splitlines() if stm.is_file() else []:
        fields = line.split()
        if len(fields) < 5 or line.startswith(";;"):
            continue
        who, start, end = fields[2], float(fields[3]), float(fields[4])
        if merged and merged[-1][0] == who and start - merged[-1][2] < gap_s:
            merged[-1] = (who, merged[-1][1], end)
        else:
            merged.append((who, start, end))
    return merged


def folder_clips(category: str, folder: Path) -> list[Clip]:
    """Every audio file under ``folder`` (``--noise CATEGORY=DIR``), labelled ``category``."""
    return [
        Clip(str(p.relative_to(folder)), category, f"dir:{folder}", p)
        for p in sorted(folder.rglob("*"))
        if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file() and p.stat().st_size
    ]


def decode(source: Path | bytes) -> Any:
    """A recording (a path or a file's bytes) as 48 kHz mono float32."""
    import av
    import numpy as np

    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), "r") as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        parts = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(-1))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def typing_burst(keys: Sequence[Path], seed: int, strokes: int = TYPING_KEYS) -> Any:
    """Keystrokes as bucklespring plays them: a key's press clip, its release clip 60-110 ms later, the next
    key 110-260 ms after the last (a brisk typist)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    events: list[tuple[int, Any]] = []
    at = 0
    for _ in range(strokes):
        press = keys[int(rng.integers(len(keys)))]
        release = press.with_name(press.name.replace("-0.", "-1."))
        hold = int(rng.uniform(0.060, 0.110) * RATE)
        events += [(at, decode(press)), (at + hold, decode(release))]
        at += int(rng.uniform(0.110, 0.260) * RATE)
    out = np.zeros(max(start + x.size for start, x in events), np.float32)
    for start, x in events:
        out[start : start + x.size] += x
    return out


def load(clip: Clip) -> Any:
    """The clip's audio, 48 kHz mono float32, at most ``MAX_CLIP_S`` long."""
    if clip.keys:
        audio = typing_burst(clip.keys, clip.seed)
    elif clip.member is not None:
        member = _cat_member(clip.path, clip.member)
        if member is None:
            raise FileNotFoundError(f"{clip.path}: no entry {clip.member}")
        audio = decode(member)
    else:
        audio = decode(clip.path)
    start = int(clip.start_s * RATE)
    if start >= audio.size:  # a track shorter than the excerpt's start: its opening instead
        start = 0
    return audio[start : start + int(min(clip.length_s, MAX_CLIP_S) * RATE)]
