"""`splitrelay bench bargein --noise`: the catalogue finds, labels and dedupes package recordings, reads
OpenTTD .cat packs, builds typing bursts and cuts clips, all on small files made here (no download)."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("av")

from splitrelay.bench.bargein_sources import (  # noqa: E402
    MAX_CLIP_S,
    SOURCES,
    Clip,
    Source,
    cat_titles,
    catalogue_clips,
    folder_clips,
    load,
    parse_noise,
    turns,
    typing_burst,
)

HW = "usr/share/games/hedgewars/Data/Sounds"


def _wav_bytes(
    seconds: float, freq: float = 440.0, rate: int = 16_000, path: Path | None = None, amp: int = 8000
) -> bytes:
    """A mono 16-bit sine, as WAV bytes (and written to ``path`` when given)."""
    import io

    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * freq * t) * amp).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    data = buf.getvalue()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data


def _cat(path: Path, entries: list[tuple[str, bytes]]) -> None:
    """An OpenTTD .cat: (offset, size) pairs, then per entry a length-prefixed title and the WAV."""
    header = bytearray()
    body = bytearray()
    base = 8 * len(entries)
    for title, wav in entries:
        name = title.encode("latin-1") + b"\0"
        item = bytes([len(name)]) + name + wav
        header += struct.pack("<II", base + len(body), len(item))
        body += item
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(header + body))


def test_parse_noise_tells_a_root_from_a_labelled_folder() -> None:
    assert parse_noise("/tmp/root") == (None, Path("/tmp/root"))
    assert parse_noise("tv speech=/data/tv") == ("tv speech", Path("/data/tv"))
    for bad in ("=/data", "cough="):
        with pytest.raises(ValueError, match="CATEGORY=DIR"):
            parse_noise(bad)


def test_catalogue_labels_by_category_dedupes_and_leaves_out_synthetic_and_spoken_files(
    tmp_path: Path,
) -> None:
    cough = _wav_bytes(0.5, 300)
    for voice in ("Default", "Default_pl", "Russian_pl"):
        (tmp_path / HW / "voices" / voice).mkdir(parents=True)
    (tmp_path / HW / "voices/Default/PoisonCough.ogg").write_bytes(cough)
    (tmp_path / HW / "voices/Default_pl/PoisonCough.ogg").write_bytes(_wav_bytes(0.5, 350))
    (tmp_path / HW / "voices/Russian_pl/PoisonCough.ogg").write_bytes(cough)  # the same file again
    _wav_bytes(1.0, 500, path=tmp_path / HW / "voices/Robot/Laugh.ogg")  # a synthetic voice: left out
    _wav_bytes(1.0, 600, path=tmp_path / HW / "voices/British/Laugh.ogg")
    dishes = tmp_path / "usr/share/tuxpaint/stamps/household/dishes"
    _wav_bytes(0.3, 2000, path=dishes / "glass.ogg")
    _wav_bytes(0.3, 2100, path=dishes / "glass_desc_fr.ogg")  # a spoken description: left out
    clips = catalogue_clips(tmp_path)
    labelled = sorted((c.category, c.name) for c in clips)
    assert labelled == [
        ("cough (acted)", "Default/PoisonCough.ogg"),
        ("cough (acted)", "Default_pl/PoisonCough.ogg"),
        ("dishes, kitchen", "dishes/glass.ogg"),
        ("laugh (acted, vocal)", "British/Laugh.ogg"),
    ]
    assert all(not c.speech for c in clips)
    assert {c.package for c in clips} == {"deb:hedgewars-data", "deb:tuxpaint-stamps-default"}


def test_an_openttd_cat_entry_is_found_by_title_and_decoded(tmp_path: Path) -> None:
    cat = tmp_path / "pack.cat"
    _cat(
        cat, [('"Horn". By someone.', _wav_bytes(0.2, 800)), ('"Applause". Original by x.', _wav_bytes(1.5))]
    )
    assert [title for title, _, _ in cat_titles(cat)] == ['"Horn". By someone.', '"Applause". Original by x.']
    source = Source("crowd", "deb:openttd-opensfx", ('pack.cat#"Applause"', 'pack.cat#"Missing"'))
    clips = catalogue_clips(tmp_path, [source])
    assert [(c.name, c.category) for c in clips] == [("pack:Applause", "crowd")]
    audio = load(clips[0])
    assert audio.size == pytest.approx(1.5 * 48_000, abs=48 * 5)  # the Applause entry, not the Horn


def test_typing_bursts_need_both_press_and_release_and_are_seeded(tmp_path: Path) -> None:
    wav = tmp_path / "usr/share/buckle/wav"
    for code in ("20", "21"):
        _wav_bytes(0.05, 3000, path=wav / f"{code}-0.wav", amp=4000)
        _wav_bytes(0.04, 2500, path=wav / f"{code}-1.wav", amp=16000)  # the release: louder, to tell apart
    _wav_bytes(0.05, 3000, path=wav / "22-0.wav")  # no release clip: not a typing key
    typing = [s for s in SOURCES if s.typing]
    clips = catalogue_clips(tmp_path, typing)
    assert len(clips) == 8 and all(c.category == "keyboard typing" for c in clips)
    assert [p.name for p in clips[0].keys] == ["20-0.wav", "21-0.wav"]
    first, again, other = (typing_burst(clips[0].keys, s) for s in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    # ten keystrokes 110-260 ms apart: 0.99..2.34 s before the last key's 50 ms press and its release
    assert 1.0 < first.size / 48_000 < 2.6
    onsets = np.flatnonzero(np.diff((np.abs(first) > 0.01).astype(int)) == 1)
    assert len(onsets) >= 10  # each keystroke starts a new sound (press, then release)
    assert float(np.abs(first).max()) > 0.4  # the release clips are played, not the press twice


def test_clips_are_cut_to_max_and_music_starts_at_its_excerpt(tmp_path: Path) -> None:
    _wav_bytes(6.0, 440, path=tmp_path / "long.wav")
    long = load(Clip("long", "music", "dir:x", tmp_path / "long.wav"))
    assert long.size == int(MAX_CLIP_S * 48_000)
    excerpt = load(Clip("long", "music", "dir:x", tmp_path / "long.wav", start_s=3.0))
    assert excerpt.size == pytest.approx(3.0 * 48_000, abs=48 * 5)
    short = load(Clip("long", "music", "dir:x", tmp_path / "long.wav", start_s=30.0))  # shorter than 30 s
    assert short.size == int(MAX_CLIP_S * 48_000)


def test_a_labelled_folder_takes_every_audio_file_under_it(tmp_path: Path) -> None:
    _wav_bytes(0.2, path=tmp_path / "tv" / "a.wav")
    _wav_bytes(0.2, path=tmp_path / "tv" / "sub" / "b.ogg")
    (tmp_path / "tv" / "notes.txt").write_text("not audio")
    clips = folder_clips("television", tmp_path / "tv")
    assert [(c.name, c.category) for c in clips] == [("a.wav", "television"), ("sub/b.ogg", "television")]


def test_installed_bucklespring_recordings_make_a_typing_burst() -> None:
    """The real recordings, when bucklespring-data is installed (nothing is downloaded here)."""
    if not Path("/usr/share/buckle/wav/1e-0.wav").is_file():
        pytest.skip("bucklespring-data is not installed (apt-get install bucklespring-data)")
    keyboard = [s for s in SOURCES if s.package == "deb:bucklespring-data"]
    clips = catalogue_clips(Path("/"), keyboard)
    assert {c.category for c in clips} == {"keyboard typing", "keyboard, one key"}
    burst = load(next(c for c in clips if c.keys))
    assert 1.0 < burst.size / 48_000 <= MAX_CLIP_S and float(np.abs(burst).max()) > 0.01


def test_a_transcribed_call_is_cut_into_speaker_turns_labelled_speech(tmp_path: Path) -> None:
    sample = tmp_path / "pyannote/audio/sample"
    _wav_bytes(6.0, 200, path=sample / "sample.wav")
    (sample / "sample.stm").write_text(
        ";; a comment line\n"
        "sample 1 A 0.50 1.00 Hello?\n"
        "sample 1 A 1.10 1.60 Oh, hello.\n"  # 100 ms after A's last words: the same turn
        "sample 1 B 1.70 2.20 Hi.\n"
        "sample 1 A 2.30 2.80 Well.\n"
        "sample 1 A 3.40 5.90 After a pause.\n"  # 600 ms later: a new turn
    )
    assert turns(sample / "sample.stm") == [
        ("A", 0.5, 1.6),
        ("B", 1.7, 2.2),
        ("A", 2.3, 2.8),
        ("A", 3.4, 5.9),
    ]
    clips = catalogue_clips(tmp_path, [s for s in SOURCES if s.speech])
    assert [(c.name, c.speech, c.start_s) for c in clips] == [
        ("sample.wav@0.5s A", True, 0.5),
        ("sample.wav@1.7s B", True, 1.7),
        ("sample.wav@2.3s A", True, 2.3),
        ("sample.wav@3.4s A", True, 3.4),
    ]
    assert load(clips[0]).size == pytest.approx(
        1.1 * 48_000, abs=48 * 5
    )  # the turn, not the rest of the call
    assert turns(tmp_path / "missing.stm") == []
