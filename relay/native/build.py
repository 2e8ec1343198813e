"""Build the native fast path (cffi API mode) from ``fastpath.c`` with the machine's C compiler.

Run by ``make setup`` and CI (``python -m splitrelay.relay.native.build``). Needs gcc and the
Python headers only: SRTP runs in the libsrtp that pylibsrtp's wheel bundles, reached through function
pointers at run time, so nothing links against libsrtp here. A failed build is not an error for the
relay: it logs once and runs the Python path (``splitrelay.relay.media.native``).

``--sanitize`` builds a separate module (``_fastpath_asan``) with AddressSanitizer and UBSan into a
directory of your choice, for tests/unit/test_native_sanitizers.py; it is never imported by the relay.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Final

import cffi

PACKAGE: Final = Path(__file__).resolve().parent.parent / "media" / "native"
SOURCE: Final = PACKAGE / "fastpath.c"
MODULE: Final = "_fastpath"
SANITIZED_MODULE: Final = "_fastpath_asan"

CDEF: Final = """
typedef struct {
    int32_t payload_type;
    int32_t marker;
    int32_t sequence;
    uint32_t timestamp;
    uint32_t ssrc;
    int32_t payload_offset;
    int32_t payload_length;
    int32_t audio_level;
    int32_t voice;
    int32_t csrc_count;
} sr_rtp;

int sr_classify(const unsigned char *data, size_t length);
int sr_parse_rtp(const unsigned char *data, size_t length, int audio_level_id, sr_rtp *out);
int sr_unprotect_parse(uintptr_t unprotect, uintptr_t session, const unsigned char *data, size_t length,
                       unsigned char *buffer, size_t capacity, int audio_level_id, sr_rtp *out);
int sr_rtp_header(unsigned char *out, int payload_type, int sequence, uint32_t timestamp, uint32_t ssrc,
                  int marker, int has_extension, int csrc_count);
int sr_protect_rtp(uintptr_t protect, uintptr_t session, unsigned char *buffer, size_t capacity,
                   size_t reserve, int payload_type, int sequence, uint32_t timestamp, uint32_t ssrc,
                   int marker, const unsigned char *extension, size_t extension_length,
                   const unsigned char *payload, size_t payload_length);
int sr_audio_in_flags(int marker, int level, int voice);
int sr_wire_audio(unsigned char *out, size_t capacity, int type, int flags, uint64_t call_id, uint32_t seq,
                  uint32_t timestamp, const unsigned char *payload, size_t payload_length);
int sr_speech_hint(int audio_level, int voice, int use_voice_bit, int threshold_level, size_t payload_length);
int sr_recv_batch(int fd, unsigned char *buffers, size_t slot, unsigned char *names, size_t name_slot,
                  int32_t *lengths, int32_t *name_lengths, int count, int64_t *stamps);
int sr_rx_timestamps(int fd, int on);

typedef struct {
    int64_t counts[23];
    int64_t count;
    int64_t sum_ns;
    int64_t max_ns;
} sr_dwell;
typedef int64_t (*sr_clock_fn)(int32_t event);
int sr_dwell_bucket(int64_t ns);
void sr_dwell_observe(sr_dwell *d, int64_t ns);
int64_t sr_clock_now(sr_clock_fn fn, int32_t event);
int64_t sr_arrivals(sr_clock_fn clock, const int64_t *stamps, int n, int64_t *arrivals);

typedef struct {
    int64_t base_seq;
    int64_t max_seq;
    int64_t bad_seq;
    int64_t cycles;
    int64_t received;
    int64_t received_prior;
    int64_t expected_prior;
    int64_t last_transit;
    int64_t clock_rate;
    double jitter;
} sr_rx_stats;

typedef struct {
    int32_t enabled;
    int32_t audio_level_id;
    uintptr_t srtp;
    uint8_t pts[128];
    uint64_t wire_id;
    uint8_t peer[128];
    int32_t peer_len;
    int32_t has_last;
    int32_t last_seq;
    int64_t ext;
    int32_t has_ts0;
    uint32_t ts0;
    int64_t playing_until;
    int32_t gate_mode;
    int32_t threshold_level;
    int32_t use_voice_bit;
    int32_t idle_seen;
    int32_t sent;
    int32_t batch_count;
    int64_t deferred_gen;
    int64_t packets;
    int64_t bytes;
    int64_t to_inference;
    int64_t malformed;
    int64_t callback_errors;
    sr_dwell *dwell;
} sr_call;

typedef struct {
    int32_t slot;
    uint32_t ssrc;
    uint8_t key[19];
    sr_rx_stats *stats;
} sr_flow;

typedef struct {
    sr_flow *flows;
    uint32_t capacity;
    uint32_t used;
    sr_call *calls;
    int32_t ncalls;
    int64_t gen;
    uintptr_t unprotect;
    sr_clock_fn clock;
} sr_table;

void sr_rx_init(sr_rx_stats *s, int64_t clock_rate, int seq);
int sr_rx_update(sr_rx_stats *s, int seq, uint32_t timestamp, int64_t arrival_ns);
int64_t sr_unwrap(sr_call *c, int seq);
int sr_flow_key(const unsigned char *name, size_t length, unsigned char *key);
int sr_flow_set(sr_table *t, const unsigned char *key, uint32_t ssrc, int32_t slot, sr_rx_stats *stats);
int sr_flow_drop_slot(sr_table *t, int32_t slot);
int32_t sr_flow_slot(const sr_table *t, const unsigned char *key, uint32_t ssrc);
int sr_batch_in(sr_table *t, const unsigned char *buffers, size_t slot_size, const unsigned char *names,
                size_t name_slot, const int32_t *lengths, const int32_t *name_lengths, int count,
                const int64_t *arrivals, unsigned char *plain, int8_t *decisions, unsigned char *out,
                size_t out_slot, int32_t *out_lengths, int32_t *out_slots, int fd, int32_t *sent);
typedef struct {
    int64_t t0;
    int64_t timeline_ns;
    int64_t lead_ns;
    int64_t tail_ns;
    int64_t catch_up_ns;
    uint32_t ts0;
    int32_t new_spurt;
    int32_t interrupted;
    int32_t paused;
    int32_t closed;
    int32_t timer_pending;
    int32_t queued;
    int32_t has_clear_before;
    uint32_t clear_before;
    int32_t has_next_position;
    uint32_t next_position;
    int64_t response_frames;
    uint32_t response_seq;
    int64_t frames_sent;
    int64_t frames_caught_up;
} sr_playout;

typedef struct {
    int32_t sequence;
    int32_t mid_acked;
    int64_t packets;
    int64_t octets;
    uint32_t last_timestamp;
    int64_t last_send_ns;
} sr_stream;

typedef struct {
    int64_t arrival_ns;
    uint32_t seq;
    uint32_t timestamp;
    int32_t length;
    int32_t continues;
    int32_t starts_response;
    uint8_t payload[320];
} sr_frame;

typedef struct {
    int32_t head;
    int32_t count;
    int32_t listed;
    sr_frame frames[64];
} sr_ring;

typedef struct {
    int32_t enabled;
    int32_t handle;
    uint64_t wire_id;
    uint8_t peer_key[19];
    int32_t has_last_audio;
    uint32_t last_audio_seq;
    int32_t heard;
    sr_playout *playout;
    sr_stream *stream;
    int64_t *playing_until;
    uintptr_t tx;
    int32_t payload_type;
    uint32_t ssrc;
    int32_t max_payload;
    uint8_t ext[32];
    int32_t ext_len;
    uint8_t remote[128];
    int32_t remote_len;
    int64_t deferred_gen;
    int64_t frames_in;
    int64_t packets_out;
    int64_t bytes_out;
    sr_dwell *dwell;
    sr_ring *ring;
} sr_out;

typedef struct {
    uint64_t id;
    sr_out *out;
} sr_id;

typedef struct {
    sr_id *ids;
    uint32_t capacity;
    uint32_t used;
    int64_t gen;
    uintptr_t protect;
    size_t reserve;
    int64_t datagrams_in;
    int64_t audio_late;
    sr_clock_fn clock;
    sr_out **paced;
    int32_t npaced;
    int32_t paced_capacity;
    int64_t pace_due;
} sr_out_table;

int sr_out_set(sr_out_table *t, uint64_t id, sr_out *out);
sr_out *sr_out_get(const sr_out_table *t, uint64_t id);
int sr_out_drop(sr_out_table *t, uint64_t id);
uint32_t sr_timestamp_at(const sr_playout *p, int64_t t_ns);
int sr_pace(sr_out_table *t, int64_t now_ns, int64_t send_ns, unsigned char *out, size_t out_slot,
            int32_t *out_lengths, int32_t *out_handles, int64_t *out_due, int max_out, int fd, int32_t *sent);
void sr_pace_forget(sr_out_table *t, sr_out *o);
int sr_batch_out(sr_out_table *t, const unsigned char *buffers, size_t slot_size, const unsigned char *names,
                 size_t name_slot, const int32_t *lengths, const int32_t *name_lengths, int count,
                 int64_t now_ns, int64_t send_ns, const int64_t *arrivals, int8_t *decisions,
                 unsigned char *out, size_t out_slot, int32_t *out_lengths, int32_t *out_handles,
                 int64_t *out_due, int fd, int32_t *sent);
typedef struct {
    int32_t recv_fd;
    int32_t batch;
    unsigned char *buffers;
    size_t slot;
    unsigned char *names;
    size_t name_slot;
    int32_t *lengths;
    int32_t *name_lengths;
    unsigned char *plain;
    int8_t *decisions;
    unsigned char *out;
    size_t out_slot;
    int32_t *out_lengths;
    int32_t *out_index;
    int64_t *out_due;
    int64_t *stamps;
    int64_t *arrivals;
    int32_t send_fd;
    int32_t sent[2];
    int32_t n;
    int32_t nout;
    int64_t arrival_ns;
    int32_t calls;
    int32_t batches;
    int64_t finished;
    int64_t delivered;
    int64_t made;
} sr_drain;
int sr_drain_in(sr_table *t, sr_drain *d, int turns);
int sr_drain_out(sr_out_table *t, sr_drain *d, int turns);
"""

OPTIMIZED: Final = ["-O2", "-Wall", "-Wextra", "-fno-strict-aliasing"]
SANITIZED: Final = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined"]  # fmt: skip


def builder(module: str = MODULE, *, sanitize: bool = False) -> cffi.FFI:
    """The cffi builder for ``module``; the C source is compiled into the module itself."""
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        module,
        SOURCE.read_text(),
        extra_compile_args=SANITIZED if sanitize else OPTIMIZED,
        extra_link_args=["-fsanitize=address,undefined"] if sanitize else [],
    )
    return ffi


def build(target: Path = PACKAGE, *, sanitize: bool = False) -> Path:
    """Compile into a scratch directory and copy the shared object into ``target``; returns its path."""
    module = SANITIZED_MODULE if sanitize else MODULE
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="splitrelay-native-") as tmp:
        built = Path(builder(module, sanitize=sanitize).compile(tmpdir=tmp, verbose=False))
        final = target / f"{module}{suffix}"
        partial = final.with_name(final.name + ".partial")
        shutil.copyfile(built, partial)
        partial.replace(final)  # atomic: a relay starting meanwhile loads the old module or the new one
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sanitize", action="store_true", help="ASan + UBSan build (tests only)")
    parser.add_argument("--target", type=Path, default=PACKAGE, help="directory for the shared object")
    args = parser.parse_args(argv)
    try:
        path = build(args.target, sanitize=args.sanitize)
    except (cffi.VerificationError, OSError) as exc:
        print(f"native fast path NOT built ({exc}); the relay will use the Python path", file=sys.stderr)
        return 1
    print(f"native fast path built: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
