/* The relay's per-datagram work in C: RTP parse (RFC 3550, RFC 8285, RFC 6464), our RTP header, the
 * wire protocol's AUDIO_IN framing, and SRTP through the libsrtp that pylibsrtp already loaded (its
 * functions and session pointers are passed in, so the session state stays in one library copy).
 *
 * Pure functions over caller-owned buffers: no allocation, no global state, every loop bounded by a
 * length. The Python reference (relay/media/rtp.py, relay/inference/wire.py) is the specification;
 * tests/unit/test_native_fastpath.py checks both give the same bytes and the same decisions.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* recvmmsg; in the cffi build Python.h (pyconfig.h) has defined it already */
#endif
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#define SR_RTP_HEADER 12
#define SR_SRTP_BUFFER 1500 /* pylibsrtp's per-session buffer: the same limit on both paths */
#define SR_WIRE_HEADER 20
#define SR_WIRE_VERSION 2
#define SR_WIRE_MAX_PAYLOAD 1380
#define SR_DTX_MAX_BYTES 2
#define SR_RECV_MAX 256     /* datagrams one sr_recv_batch call takes at most */
#define SR_RECV_SLOT_MAX 65536
#define SR_RECV_NAME_MAX 128 /* sizeof(struct sockaddr_storage) */

/* Parse results (negative: the packet is malformed, and which rule it broke). */
#define SR_OK 0
#define SR_ERR_SHORT -1
#define SR_ERR_VERSION -2
#define SR_ERR_ZERO_PADDING -3
#define SR_ERR_EXT_HEADER -4
#define SR_ERR_EXT_LENGTH -5
#define SR_ERR_OVERRUN -6
#define SR_ERR_UNDECRYPTABLE -100
#define SR_ERR_TOO_LONG -101

/* Demultiplexing (RFC 7983 and RFC 5761) of what reaches the ICE socket. */
#define SR_KIND_OTHER 0 /* STUN, DTLS, anything else: aioice and aiortc decide */
#define SR_KIND_SRTP 1
#define SR_KIND_SRTCP 2

/* Speech hints for barge-in, decided here so Python hears only about candidates. */
#define SR_HINT_SILENCE 0
#define SR_HINT_SPEECH 1
#define SR_HINT_DECODE 2 /* no level and not DTX: only decoding the frame can tell */

typedef struct {
    int32_t payload_type;
    int32_t marker;
    int32_t sequence;
    uint32_t timestamp;
    uint32_t ssrc;
    int32_t payload_offset;
    int32_t payload_length;
    int32_t audio_level; /* -1: absent or not negotiated */
    int32_t voice;
    int32_t csrc_count;
} sr_rtp;

typedef int (*sr_srtp_fn)(void *ctx, void *buffer, int *length);

static uint16_t be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void put16(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

int sr_classify(const unsigned char *data, size_t length) {
    if (length == 0 || data[0] < 128 || data[0] > 191) return SR_KIND_OTHER;
    if (length > 1 && data[1] >= 192 && data[1] <= 223) return SR_KIND_SRTCP;
    return SR_KIND_SRTP;
}

/* The first byte of extension element ext_id's value in data[start:end] (RFC 8285), or -1.
 * An empty value also gives -1 (the reference reads no level from it). */
static int find_level_byte(const unsigned char *data, long start, long end, uint32_t profile, int ext_id) {
    long i = start;
    if (profile == 0xBEDE) {
        while (i < end) {
            int b = data[i];
            if (b == 0) {
                i += 1;
                continue;
            }
            int element_id = b >> 4;
            if (element_id == 15) return -1;
            long length = (b & 0x0F) + 1;
            if (i + 1 + length > end) return -1;
            if (element_id == ext_id) return data[i + 1];
            i += 1 + length;
        }
        return -1;
    }
    if ((profile & 0xFFF0) == 0x1000) {
        while (i < end) {
            int element_id = data[i];
            if (element_id == 0) {
                i += 1;
                continue;
            }
            if (i + 1 >= end) return -1;
            long length = data[i + 1];
            if (i + 2 + length > end) return -1;
            if (element_id == ext_id) return length > 0 ? data[i + 2] : -1;
            i += 2 + length;
        }
        return -1;
    }
    return -1;
}

int sr_parse_rtp(const unsigned char *data, size_t length, int audio_level_id, sr_rtp *out) {
    if (length < SR_RTP_HEADER) return SR_ERR_SHORT;
    if (length > 0x7FFFFFFF) return SR_ERR_OVERRUN;
    long size = (long)length;
    int b0 = data[0], b1 = data[1];
    if ((b0 >> 6) != 2) return SR_ERR_VERSION;
    int csrc_count = b0 & 0x0F;
    long offset = SR_RTP_HEADER + 4L * csrc_count;
    long end = size;
    if (b0 & 0x20) {
        int padding = data[size - 1];
        if (padding == 0) return SR_ERR_ZERO_PADDING;
        end -= padding;
    }
    int level = -1, voice = 0;
    if (b0 & 0x10) {
        if (offset + 4 > end) return SR_ERR_EXT_HEADER;
        uint32_t profile = be16(data + offset);
        long words = be16(data + offset + 2);
        long ext_start = offset + 4;
        offset = ext_start + 4 * words;
        if (offset > end) return SR_ERR_EXT_LENGTH;
        if (audio_level_id >= 0) {
            int value = find_level_byte(data, ext_start, offset, profile, audio_level_id);
            if (value >= 0) {
                level = value & 0x7F;
                voice = (value & 0x80) != 0;
            }
        }
    }
    if (offset > end) return SR_ERR_OVERRUN;
    out->payload_type = b1 & 0x7F;
    out->marker = (b1 & 0x80) != 0;
    out->sequence = be16(data + 2);
    out->timestamp = be32(data + 4);
    out->ssrc = be32(data + 8);
    out->payload_offset = (int32_t)offset;
    out->payload_length = (int32_t)(end - offset);
    out->audio_level = level;
    out->voice = voice;
    out->csrc_count = csrc_count;
    return SR_OK;
}

int sr_unprotect_parse(uintptr_t unprotect, uintptr_t session, const unsigned char *data, size_t length,
                       unsigned char *buffer, size_t capacity, int audio_level_id, sr_rtp *out) {
    if (length > capacity || length > SR_SRTP_BUFFER) return SR_ERR_TOO_LONG;
    memcpy(buffer, data, length);
    int plain = (int)length;
    sr_srtp_fn fn = (sr_srtp_fn)unprotect;
    if (fn((void *)session, buffer, &plain) != 0) return SR_ERR_UNDECRYPTABLE;
    if (plain < 0 || (size_t)plain > length) return SR_ERR_UNDECRYPTABLE;
    int status = sr_parse_rtp(buffer, (size_t)plain, audio_level_id, out);
    return status == SR_OK ? plain : status;
}

int sr_rtp_header(unsigned char *out, int payload_type, int sequence, uint32_t timestamp, uint32_t ssrc,
                  int marker, int has_extension, int csrc_count) {
    if (payload_type < 0 || payload_type > 127 || sequence < 0 || sequence > 0xFFFF || csrc_count < 0
        || csrc_count > 15)
        return -1;
    out[0] = (unsigned char)(0x80 | (has_extension ? 0x10 : 0) | csrc_count);
    out[1] = (unsigned char)((marker ? 0x80 : 0) | payload_type);
    put16(out + 2, (uint32_t)sequence);
    put32(out + 4, timestamp);
    put32(out + 8, ssrc);
    return SR_RTP_HEADER;
}

/* Our RTP packet (header, extension block, payload) built in buffer and protected in place: the
 * protected length, SR_ERR_TOO_LONG, or SR_ERR_UNDECRYPTABLE when libsrtp refused. `reserve` is the
 * trailer room libsrtp needs past the packet (pylibsrtp's SRTP_MAX_TRAILER_LEN). */
int sr_protect_rtp(uintptr_t protect, uintptr_t session, unsigned char *buffer, size_t capacity,
                   size_t reserve, int payload_type, int sequence, uint32_t timestamp, uint32_t ssrc,
                   int marker, const unsigned char *extension, size_t extension_length,
                   const unsigned char *payload, size_t payload_length) {
    if (capacity > SR_SRTP_BUFFER) capacity = SR_SRTP_BUFFER;
    if (reserve > capacity) return SR_ERR_TOO_LONG;
    if (extension_length > capacity || payload_length > capacity) return SR_ERR_TOO_LONG;
    size_t total = SR_RTP_HEADER + extension_length + payload_length;
    if (total > capacity - reserve) return SR_ERR_TOO_LONG;
    if (sr_rtp_header(buffer, payload_type, sequence, timestamp, ssrc, marker, extension_length > 0, 0) < 0)
        return SR_ERR_OVERRUN;
    if (extension_length) memcpy(buffer + SR_RTP_HEADER, extension, extension_length);
    if (payload_length) memcpy(buffer + SR_RTP_HEADER + extension_length, payload, payload_length);
    int len = (int)total;
    sr_srtp_fn fn = (sr_srtp_fn)protect;
    if (fn((void *)session, buffer, &len) != 0) return SR_ERR_UNDECRYPTABLE;
    if (len < (int)total || (size_t)len > capacity) return SR_ERR_UNDECRYPTABLE;
    return len;
}

/* Flags of an AUDIO_IN frame (relay/inference/wire.py audio_in_flags): level -1 means none. */
int sr_audio_in_flags(int marker, int level, int voice) {
    int flags = marker ? 0x0001 : 0;
    if (level < 0 || level > 127) return flags;
    flags |= 0x0002 | (level << 8);
    if (voice) flags |= 0x0004;
    return flags;
}

/* One wire datagram of an audio type: the 20-byte header then the Opus frame. The length, or -1. */
int sr_wire_audio(unsigned char *out, size_t capacity, int type, int flags, uint64_t call_id, uint32_t seq,
                  uint32_t timestamp, const unsigned char *payload, size_t payload_length) {
    if (payload_length == 0 || payload_length > SR_WIRE_MAX_PAYLOAD) return -1;
    if (type < 0 || type > 0xFF || flags < 0 || flags > 0xFFFF) return -1;
    if (capacity < SR_WIRE_HEADER + payload_length) return -1;
    out[0] = SR_WIRE_VERSION;
    out[1] = (unsigned char)type;
    put16(out + 2, (uint32_t)flags);
    put32(out + 4, (uint32_t)(call_id >> 32));
    put32(out + 8, (uint32_t)call_id);
    put32(out + 12, seq);
    put32(out + 16, timestamp);
    memcpy(out + SR_WIRE_HEADER, payload, payload_length);
    return (int)(SR_WIRE_HEADER + payload_length);
}

/* Barge-in's per-packet question, answered without Python when the packet can answer it: speech by
 * the RFC 6464 level against the threshold (in -dBov, so speech is level <= -threshold), silence for
 * DTX-sized frames, else "decode this one" (relay/inference/speech.py SpeechDetector.is_speech). */
int sr_speech_hint(int audio_level, int voice, int use_voice_bit, int threshold_level, size_t payload_length) {
    if (audio_level >= 0) {
        if (voice && use_voice_bit) return SR_HINT_SPEECH;
        return audio_level <= threshold_level ? SR_HINT_SPEECH : SR_HINT_SILENCE;
    }
    return payload_length <= SR_DTX_MAX_BYTES ? SR_HINT_SILENCE : SR_HINT_DECODE;
}

/* The clock the per-batch paths read (NULL: CLOCK_MONOTONIC, which is Python's perf_counter_ns on Linux);
 * tests install a fake one. `event` says which reading: a batch's arrival, the playout clock of an
 * outbound batch, the stream's send time, or when the batch's datagrams have left (dwell ends). */
typedef int64_t (*sr_clock_fn)(int32_t event);
#define SR_CLOCK_ARRIVAL 0
#define SR_CLOCK_SEND 1
#define SR_CLOCK_DONE 2
#define SR_CLOCK_RECEIVED 3 /* a fake clock's arrival of the next stamped datagram (sr_arrivals) */

/* A reading of `fn` (NULL: CLOCK_MONOTONIC, as time.perf_counter_ns). */
int64_t sr_clock_now(sr_clock_fn fn, int32_t event) {
    if (fn != NULL) return fn(event);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#define SR_STAMP_MAX_AGE_NS 10000000000LL /* a kernel stamp older than this is a clock step, not a wait */
#define SR_CONTROL 64 /* control bytes per datagram: one SCM_TIMESTAMPNS (32) with room to spare */

static int64_t realtime_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#ifdef __linux__
/* The SCM_TIMESTAMPNS a received message carries, in ns, or 0 (none, or cut off). */
static int64_t control_stamp(struct msghdr *m) {
    if (m->msg_controllen == 0) return 0;
    int seen = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c != NULL && seen < 8; c = CMSG_NXTHDR(m, c), seen++) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS
            && c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof ts);
            int64_t ns = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
            return ns > 0 ? ns : 0;
        }
    }
    return 0;
}
#endif

/* Up to `count` datagrams from the non-blocking UDP socket `fd` in one recvmmsg(2) (the shared media
 * port: issue 17). Datagram i lands at buffers + i * slot with its length in lengths[i] (-1 when it was
 * longer than `slot` and cut: the caller drops it), its source address at names + i * name_slot with
 * its length in name_lengths[i]. With `stamps` (NULL: no control messages asked for), stamps[i] is the
 * kernel's receive time of datagram i (SO_TIMESTAMPNS, CLOCK_REALTIME ns: see sr_rx_timestamps), 0 when
 * none came with it. Returns how many arrived, 0 when the socket is empty, or -errno (an ICMP error
 * queued on the socket, say: the next call goes on with the datagrams behind it). */
int sr_recv_batch(int fd, unsigned char *buffers, size_t slot, unsigned char *names, size_t name_slot,
                  int32_t *lengths, int32_t *name_lengths, int count, int64_t *stamps) {
#ifndef __linux__
    (void)fd, (void)buffers, (void)slot, (void)names, (void)name_slot, (void)lengths, (void)name_lengths;
    (void)count, (void)stamps;
    return -ENOSYS; /* no recvmmsg: the shared port reads with recvfrom (relay/media/shared_port.py) */
#else
    struct mmsghdr msgs[SR_RECV_MAX];
    struct iovec iov[SR_RECV_MAX];
    union {
        unsigned char buf[SR_CONTROL];
        struct cmsghdr align;
    } control[SR_RECV_MAX];
    if (fd < 0 || count <= 0 || count > SR_RECV_MAX || slot == 0 || slot > SR_RECV_SLOT_MAX
        || name_slot == 0 || name_slot > SR_RECV_NAME_MAX)
        return -EINVAL;
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = buffers + (size_t)i * slot;
        iov[i].iov_len = slot;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = names + (size_t)i * name_slot;
        msgs[i].msg_hdr.msg_namelen = (socklen_t)name_slot;
        if (stamps != NULL) {
            msgs[i].msg_hdr.msg_control = control[i].buf;
            msgs[i].msg_hdr.msg_controllen = sizeof control[i].buf;
        }
    }
    int n = recvmmsg(fd, msgs, (unsigned int)count, MSG_DONTWAIT, NULL);
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        int cut = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || msgs[i].msg_len > slot;
        lengths[i] = cut ? -1 : (int32_t)msgs[i].msg_len;
        socklen_t name_length = msgs[i].msg_hdr.msg_namelen;
        name_lengths[i] = (int32_t)(name_length > name_slot ? name_slot : name_length);
        if (stamps != NULL) stamps[i] = control_stamp(&msgs[i].msg_hdr);
    }
    return n;
#endif
}

/* Ask the kernel for a receive timestamp on every datagram of `fd` (SO_TIMESTAMPNS: software, taken when
 * the datagram entered the host's receive path; CLOCK_REALTIME): 0, or -errno (-ENOSYS off Linux). */
int sr_rx_timestamps(int fd, int on) {
#if defined(__linux__) && defined(SO_TIMESTAMPNS)
    int value = on ? 1 : 0;
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &value, sizeof value) != 0) return -errno;
    return 0;
#else
    (void)fd, (void)on;
    return -ENOSYS;
#endif
}

/* The arrival of each datagram of a batch in the dwell's clock: arrivals[i] from its kernel stamp
 * (stamps[i], CLOCK_REALTIME) moved to CLOCK_MONOTONIC by an offset read once per batch (the two clocks
 * read back to back), or the batch's own reading (when recvmmsg returned) where it has no stamp (0, or
 * stamps NULL) or the stamp does not fall in (batch - SR_STAMP_MAX_AGE_NS, batch]: the realtime clock
 * was stepped, not a wait. With a fake clock (tests) the batch reading is clock(SR_CLOCK_ARRIVAL) and a
 * stamped datagram's arrival clock(SR_CLOCK_RECEIVED), in datagram order, under the same bounds. Returns
 * the batch's reading. */
int64_t sr_arrivals(sr_clock_fn clock, const int64_t *stamps, int n, int64_t *arrivals) {
    int64_t batch = sr_clock_now(clock, SR_CLOCK_ARRIVAL);
    int64_t offset = 0;
    int have_offset = 0;
    for (int i = 0; i < n; i++) {
        int64_t at = batch;
        if (stamps != NULL && stamps[i] > 0) {
            if (clock != NULL)
                at = clock(SR_CLOCK_RECEIVED);
            else {
                if (!have_offset) {
                    offset = batch - realtime_now();
                    have_offset = 1;
                }
                at = stamps[i] + offset;
            }
            if (at > batch || at <= batch - SR_STAMP_MAX_AGE_NS) at = batch;
        }
        arrivals[i] = at;
    }
    return batch;
}

/* ---- The per-batch inbound path (issue 17): caller SRTP -> AUDIO_IN without Python ------------------
 *
 * Python keeps the decisions and writes hints: a flow table keyed by (remote address, SSRC) pointing at a
 * call slot (sr_call) and that SSRC's reception statistics (sr_rx_stats), entered after the Python path
 * accepted a packet of that flow. sr_batch_in finishes the datagrams of a batch recvmmsg read whose flow
 * is known and whose call's slot says the packet needs no decision; everything else is left for Python in
 * order (decisions[i] = SR_TO_PYTHON), and once a datagram of a call or of a source address is left for
 * Python, every later one of that call or address in the batch is too, so per-call order holds. The state
 * the Python path also touches (sequence unwrapping, timestamp base, RFC 3550 statistics) lives only here.
 */

#define SR_TO_C 0
#define SR_TO_PYTHON 1
#define SR_BATCH_MAX 256
#define SR_FLOW_PROBE_MAX 4096
#define SR_WIRE_AUDIO_IN 3 /* relay/inference/wire.py MsgType.AUDIO_IN (tests check) */
#define SR_GATE_PYTHON 0      /* during playback every packet goes to Python */
#define SR_GATE_SILENT 1      /* during playback silence changes nothing: C may finish silent packets */
#define SR_GATE_TALKING 2     /* during playback speech changes nothing: C may finish speech packets */
#define SR_KEY_LEN 19         /* family (1), port (2), address (16) */

/* A dwell histogram (relay/telemetry.py DwellHistogram, whose figures live here when a native path runs:
 * the one copy, read by /metrics and the hang-up summary, written by C and by the Python path alike).
 * Buckets by the microseconds floor(ns / 1000): counts[i] for the first bound >= it, the last for above
 * them all (bisect_left over DWELL_BUCKETS_US; tests check the bounds and the bucketing). */
#define SR_DWELL_BOUNDS 22
typedef struct {
    int64_t counts[SR_DWELL_BOUNDS + 1];
    int64_t count;
    int64_t sum_ns;
    int64_t max_ns;
} sr_dwell;


typedef struct {
    int64_t base_seq;
    int64_t max_seq;
    int64_t bad_seq;
    int64_t cycles;
    int64_t received;
    int64_t received_prior;
    int64_t expected_prior;
    int64_t last_transit; /* -1: none yet */
    int64_t clock_rate;
    double jitter;
} sr_rx_stats;

typedef struct {
    int32_t enabled;        /* Python: the C path may finish this call's packets */
    int32_t audio_level_id; /* -1: none negotiated */
    uintptr_t srtp;         /* the rx srtp_t */
    uint8_t pts[128];       /* payload types this call receives */
    uint64_t wire_id;
    uint8_t peer[SR_RECV_NAME_MAX]; /* inference's sockaddr */
    int32_t peer_len;
    int32_t has_last;       /* sequence unwrapper (relay/call.py SequenceUnwrapper) */
    int32_t last_seq;
    int64_t ext;
    int32_t has_ts0;
    uint32_t ts0;
    int64_t playing_until;  /* arrival before this: playback is on (relay/playout.py Playout.playing) */
    int32_t gate_mode;
    int32_t threshold_level;
    int32_t use_voice_bit;
    int32_t idle_seen;      /* a packet arrived while nothing played: Python's _playback_started is False */
    int32_t sent;           /* something went to inference (the link's liveness sweep reads and clears it) */
    int32_t batch_count;    /* packets this call sent in the current batch */
    int64_t deferred_gen;   /* batch in which a datagram of this call was left for Python */
    int64_t packets;        /* counters not yet folded into Python's */
    int64_t bytes;
    int64_t to_inference;
    int64_t malformed;
    int64_t callback_errors;
    sr_dwell *dwell;        /* the call's inbound dwell histogram (NULL: none observed here) */
} sr_call;

typedef struct {
    int32_t slot; /* -1: empty */
    uint32_t ssrc;
    uint8_t key[SR_KEY_LEN];
    sr_rx_stats *stats;
} sr_flow;

typedef struct {
    sr_flow *flows;
    uint32_t capacity; /* a power of two */
    uint32_t used;
    sr_call *calls;
    int32_t ncalls;
    int64_t gen;
    uintptr_t unprotect; /* libsrtp's srtp_unprotect (pylibsrtp's copy) */
    sr_clock_fn clock;   /* NULL: CLOCK_MONOTONIC */
} sr_table;

static int64_t floor_div(__int128 n, int64_t d) {
    __int128 q = n / d;
    if ((n % d) != 0 && (n < 0)) q -= 1;
    return (int64_t)q;
}

static const int64_t sr_dwell_bounds_us[SR_DWELL_BOUNDS] = {
    5, 10, 20, 30, 50, 75, 100, 150, 200, 250, 300, 400, 500, 600, 750, 1000, 1500, 2000, 5000, 10000, 20000,
    100000,
};

/* The bucket of a dwell of `ns` nanoseconds (DwellHistogram.observe_ns's bisect). */
int sr_dwell_bucket(int64_t ns) {
    int64_t us = floor_div(ns, 1000);
    int i = 0;
    while (i < SR_DWELL_BOUNDS && sr_dwell_bounds_us[i] < us) i++;
    return i;
}

/* DwellHistogram.observe_ns in C. */
void sr_dwell_observe(sr_dwell *d, int64_t ns) {
    d->counts[sr_dwell_bucket(ns)]++;
    d->count++;
    d->sum_ns += ns;
    if (ns > d->max_ns) d->max_ns = ns;
}

void sr_rx_init(sr_rx_stats *s, int64_t clock_rate, int seq) {
    s->clock_rate = clock_rate;
    s->jitter = 0.0;
    s->last_transit = -1;
    s->base_seq = seq;
    s->max_seq = seq;
    s->bad_seq = 65536 + 1;
    s->cycles = 0;
    s->received = 0;
    s->received_prior = 0;
    s->expected_prior = 0;
}

/* RFC 3550 A.1/A.8, exactly relay/media/rtcp.py ReceptionStats.update: 1, or 0 for a stray packet. */
int sr_rx_update(sr_rx_stats *s, int seq, uint32_t timestamp, int64_t arrival_ns) {
    int64_t udelta = (seq - s->max_seq) & 0xFFFF;
    if (s->received == 0 && seq == s->base_seq) {
        /* the first packet */
    } else if (udelta < 3000) {
        if (seq < s->max_seq) s->cycles += 65536;
        s->max_seq = seq;
    } else if (udelta <= 65536 - 100) {
        if (seq == s->bad_seq) {
            int64_t rate = s->clock_rate;
            double jitter = s->jitter;
            int64_t last = s->last_transit;
            sr_rx_init(s, rate, seq);
            s->jitter = jitter;
            s->last_transit = last;
        } else {
            s->bad_seq = (seq + 1) & 0xFFFF;
            return 0;
        }
    }
    s->received += 1;
    int64_t scaled = floor_div((__int128)arrival_ns * s->clock_rate, 1000000000);
    int64_t transit = (int64_t)(((uint64_t)scaled - (uint64_t)timestamp) & 0xFFFFFFFFu);
    int64_t last = s->last_transit;
    s->last_transit = transit;
    if (last >= 0) {
        int64_t d = ((transit - last + 0x80000000LL) & 0xFFFFFFFFLL) - 0x80000000LL;
        if (d < 0) d = -d;
        s->jitter += ((double)d - s->jitter) / 16.0;
    }
    return 1;
}

/* relay/call.py SequenceUnwrapper.extend on the slot's state. */
int64_t sr_unwrap(sr_call *c, int seq) {
    if (!c->has_last) {
        c->has_last = 1;
        c->last_seq = seq;
        return 0;
    }
    int64_t delta = (seq - c->last_seq) & 0xFFFF;
    if (delta < 0x8000) {
        c->ext += delta;
        c->last_seq = seq;
        return c->ext;
    }
    return c->ext - (0x10000 - delta);
}

/* A source address (a raw sockaddr, as recvmmsg fills it) as the flow key's first SR_KEY_LEN bytes. */
int sr_flow_key(const unsigned char *name, size_t length, unsigned char *key) {
    memset(key, 0, SR_KEY_LEN);
    if (length < 2) return -1;
    uint16_t family;
    memcpy(&family, name, 2);
    if (family == AF_INET && length >= 8) {
        key[0] = 4;
        memcpy(key + 1, name + 2, 2);
        memcpy(key + 3, name + 4, 4);
        return 0;
    }
    if (family == AF_INET6 && length >= 24) {
        key[0] = 6;
        memcpy(key + 1, name + 2, 2);
        memcpy(key + 3, name + 8, 16);
        return 0;
    }
    return -1;
}

static uint32_t flow_hash(const unsigned char *key, uint32_t ssrc) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < SR_KEY_LEN; i++) h = (h ^ key[i]) * 16777619u;
    for (int i = 0; i < 4; i++) h = (h ^ ((ssrc >> (8 * i)) & 0xFF)) * 16777619u;
    return h;
}

static int32_t flow_find(const sr_table *t, const unsigned char *key, uint32_t ssrc) {
    uint32_t mask = t->capacity - 1;
    uint32_t i = flow_hash(key, ssrc) & mask;
    uint32_t limit = t->capacity < SR_FLOW_PROBE_MAX ? t->capacity : SR_FLOW_PROBE_MAX;
    for (uint32_t n = 0; n < limit; n++, i = (i + 1) & mask) {
        const sr_flow *f = &t->flows[i];
        if (f->slot < 0) return -1;
        if (f->ssrc == ssrc && memcmp(f->key, key, SR_KEY_LEN) == 0) return (int32_t)i;
    }
    return -1;
}

/* The slot a flow points at, or -1 (tests; the batch path looks flows up itself). */
int32_t sr_flow_slot(const sr_table *t, const unsigned char *key, uint32_t ssrc) {
    if (t->capacity == 0 || (t->capacity & (t->capacity - 1)) != 0) return -1;
    int32_t at = flow_find(t, key, ssrc);
    return at < 0 ? -1 : t->flows[at].slot;
}

/* Enter or update a flow: 0, or -1 when the table is too full (the flow stays on the Python path). */
int sr_flow_set(sr_table *t, const unsigned char *key, uint32_t ssrc, int32_t slot, sr_rx_stats *stats) {
    if (t->capacity == 0 || (t->capacity & (t->capacity - 1)) != 0 || slot < 0 || slot >= t->ncalls)
        return -1;
    int32_t at = flow_find(t, key, ssrc);
    if (at >= 0) {
        t->flows[at].slot = slot;
        t->flows[at].stats = stats;
        return 0;
    }
    if (t->used >= t->capacity / 2) return -1;
    uint32_t mask = t->capacity - 1;
    uint32_t i = flow_hash(key, ssrc) & mask;
    uint32_t limit = t->capacity < SR_FLOW_PROBE_MAX ? t->capacity : SR_FLOW_PROBE_MAX;
    for (uint32_t n = 0; n < limit; n++, i = (i + 1) & mask) {
        sr_flow *f = &t->flows[i];
        if (f->slot < 0) {
            f->slot = slot;
            f->ssrc = ssrc;
            memcpy(f->key, key, SR_KEY_LEN);
            f->stats = stats;
            t->used++;
            return 0;
        }
    }
    return -1;
}

/* Remove every flow of `slot` (a call's fast path closed), keeping linear probing's chains whole. */
int sr_flow_drop_slot(sr_table *t, int32_t slot) {
    int removed = 0;
    uint32_t mask = t->capacity - 1;
    for (uint32_t i = 0; i < t->capacity; i++) {
        if (t->flows[i].slot != slot) continue;
        /* backward-shift deletion */
        uint32_t hole = i;
        t->flows[hole].slot = -1;
        t->used--;
        removed++;
        uint32_t j = hole;
        for (uint32_t n = 0; n < t->capacity; n++) {
            j = (j + 1) & mask;
            sr_flow *f = &t->flows[j];
            if (f->slot < 0) break;
            uint32_t home = flow_hash(f->key, f->ssrc) & mask;
            /* may f move to the hole? only if its home is not cyclically in (hole, j] */
            int between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
            if (!between) {
                t->flows[hole] = *f;
                f->slot = -1;
                hole = j;
            }
        }
        if (t->flows[i].slot == slot) i--; /* an entry of the same slot moved into i: look again */
    }
    return removed;
}

typedef struct {
    int version_ok;
    int pt, marker, seq;
    uint32_t ts, ssrc;
    int level, voice; /* level -1: none */
} sr_peek;

/* The clear RTP header of an SRTP packet: what the per-packet decisions need before unprotecting.
 * 0, or -1 when Python must look (padding, an odd header). */
static int peek_header(const unsigned char *d, long n, int level_id, sr_peek *p) {
    if (n < SR_RTP_HEADER) return -1;
    int b0 = d[0];
    if ((b0 >> 6) != 2 || (b0 & 0x20)) return -1;
    long offset = SR_RTP_HEADER + 4L * (b0 & 0x0F);
    p->level = -1;
    p->voice = 0;
    if (b0 & 0x10) {
        if (offset + 4 > n) return -1;
        uint32_t profile = be16(d + offset);
        long words = be16(d + offset + 2);
        long start = offset + 4;
        offset = start + 4 * words;
        if (offset > n) return -1;
        if (level_id >= 0) {
            int value = find_level_byte(d, start, offset, profile, level_id);
            if (value >= 0) {
                p->level = value & 0x7F;
                p->voice = (value & 0x80) != 0;
            }
        }
    }
    if (offset > n) return -1;
    p->pt = d[1] & 0x7F;
    p->marker = (d[1] & 0x80) != 0;
    p->seq = be16(d + 2);
    p->ts = be32(d + 4);
    p->ssrc = be32(d + 8);
    return 0;
}

/* May C finish this packet as far as barge-in goes (relay/call.py _on_rtp and relay/barge_gate.py)?
 * 2: yes, and nothing is playing (Python's _playback_started becomes False once it is authentic). */
static int barge_allows(const sr_call *c, const sr_peek *p, int64_t arrival) {
    if (!(arrival < c->playing_until)) return 2;
    if (c->gate_mode == SR_GATE_PYTHON || p->level < 0) return 0;
    int hint = sr_speech_hint(p->level, p->voice, c->use_voice_bit, c->threshold_level, SR_DTX_MAX_BYTES + 1);
    if (c->gate_mode == SR_GATE_SILENT) return hint == SR_HINT_SILENCE;
    if (c->gate_mode == SR_GATE_TALKING) return hint == SR_HINT_SPEECH;
    return 0;
}

static int key_deferred(const unsigned char (*keys)[SR_KEY_LEN], int nkeys, const unsigned char *key) {
    for (int k = 0; k < nkeys; k++)
        if (memcmp(keys[k], key, SR_KEY_LEN) == 0) return 1;
    return 0;
}

/* The protected datagrams out + k * out_slot (out_lengths[k] bytes) to peers[k] (peer_lengths[k] bytes of
 * sockaddr), k < n, in as few sendmmsg calls as the kernel allows: how many it took. A datagram the kernel
 * refuses (EMSGSIZE, an ICMP error) is skipped and counted as taken, as SendBatch does; EAGAIN or ENOBUFS
 * stops (the caller sends the rest in order). Both per-batch paths send through it. */
static int send_batch(int fd, unsigned char *out, size_t out_slot, const int32_t *out_lengths,
                      void *const *peers, const int32_t *peer_lengths, int n) {
#ifdef __linux__
    struct mmsghdr msgs[SR_BATCH_MAX];
    struct iovec iov[SR_BATCH_MAX];
    if (n > SR_BATCH_MAX) n = SR_BATCH_MAX;
    for (int k = 0; k < n; k++) {
        iov[k].iov_base = out + (size_t)k * out_slot;
        iov[k].iov_len = (size_t)out_lengths[k];
        memset(&msgs[k], 0, sizeof msgs[k]);
        msgs[k].msg_hdr.msg_iov = &iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
        msgs[k].msg_hdr.msg_name = peers[k];
        msgs[k].msg_hdr.msg_namelen = (socklen_t)peer_lengths[k];
    }
    int start = 0;
    for (int round = 0; round < n && start < n; round++) {
        int m = sendmmsg(fd, msgs + start, (unsigned int)(n - start), MSG_DONTWAIT);
        if (m > 0) {
            start += m;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) break;
        start += 1;
    }
    return start;
#else
    (void)fd, (void)out, (void)out_slot, (void)out_lengths, (void)peers, (void)peer_lengths, (void)n;
    return 0;
#endif
}

/* The batch recvmmsg left in (buffers, lengths, names), datagram i having arrived at arrivals[i] (in the
 * dwell's clock: sr_arrivals): see the section comment. Wire datagrams for inference go to
 * out + k * out_slot (out_lengths[k], out_slots[k] the call slot), k < the return value; when fd >= 0 they
 * leave in one sendmmsg from here and sent[0] says how many the kernel took (the rest, from sent[0] on,
 * Python sends in order); sent[1] is how many datagrams C finished (decisions[i] == SR_TO_C). Each one's
 * dwell runs from its own arrival until the sendmmsg returned. -1: bad arguments. */
int sr_batch_in(sr_table *t, const unsigned char *buffers, size_t slot_size, const unsigned char *names,
                size_t name_slot, const int32_t *lengths, const int32_t *name_lengths, int count,
                const int64_t *arrivals, unsigned char *plain, int8_t *decisions, unsigned char *out,
                size_t out_slot, int32_t *out_lengths, int32_t *out_slots, int fd, int32_t *sent) {
    sent[0] = sent[1] = 0;
    if (count < 0 || count > SR_BATCH_MAX || out_slot < SR_WIRE_HEADER + SR_WIRE_MAX_PAYLOAD
        || slot_size > SR_RECV_SLOT_MAX || name_slot > SR_RECV_NAME_MAX || t->capacity == 0
        || t->unprotect == 0 || arrivals == NULL)
        return -1;
    int64_t gen = ++t->gen;
    unsigned char deferred[SR_BATCH_MAX][SR_KEY_LEN];
    int64_t out_arrival[SR_BATCH_MAX];
    int ndeferred = 0;
    int nout = 0;
    for (int i = 0; i < count; i++) {
        decisions[i] = SR_TO_PYTHON;
        int64_t arrival_ns = arrivals[i];
        int32_t length = lengths[i];
        if (length < 0) continue; /* cut by the kernel: the reader counts it */
        const unsigned char *d = buffers + (size_t)i * slot_size;
        unsigned char key[SR_KEY_LEN];
        int32_t name_length = name_lengths[i];
        if (name_length < 0 || (size_t)name_length > name_slot
            || sr_flow_key(names + (size_t)i * name_slot, (size_t)name_length, key) < 0)
            continue;
        int to_python = 1;
        sr_call *c = NULL;
        do {
            if (sr_classify(d, (size_t)length) != SR_KIND_SRTP || length > SR_SRTP_BUFFER) break;
            if (key_deferred((const unsigned char (*)[SR_KEY_LEN])deferred, ndeferred, key)) break;
            if (length < SR_RTP_HEADER) break;
            int32_t at = flow_find(t, key, be32(d + 8));
            if (at < 0) break;
            sr_flow *f = &t->flows[at];
            if (f->slot < 0 || f->slot >= t->ncalls) break;
            c = &t->calls[f->slot];
            if (!c->enabled || c->deferred_gen == gen || f->stats == NULL || c->srtp == 0) break;
            sr_peek p;
            if (peek_header(d, length, c->audio_level_id, &p) < 0) break;
            if (!c->pts[p.pt]) break;
            int barge = barge_allows(c, &p, arrival_ns);
            if (!barge) break;
            memcpy(plain, d, (size_t)length);
            int n = length;
            if (((sr_srtp_fn)t->unprotect)((void *)c->srtp, plain, &n) != 0 || n < 0 || n > length) break;
            /* authentic: from here the packet is finished here, whatever it holds */
            to_python = 0;
            sr_rtp r;
            if (sr_parse_rtp(plain, (size_t)n, c->audio_level_id, &r) != SR_OK) {
                c->malformed++;
                break;
            }
            sr_rx_update(f->stats, r.sequence, r.timestamp, arrival_ns);
            c->packets++;
            c->bytes += r.payload_length;
            if (!c->has_ts0) {
                c->has_ts0 = 1;
                c->ts0 = r.timestamp;
            }
            int flags = sr_audio_in_flags(r.marker, r.audio_level, r.voice && r.audio_level >= 0);
            uint32_t ts = r.timestamp - c->ts0;
            uint32_t seq = (uint32_t)sr_unwrap(c, r.sequence);
            c->sent = 1;
            int w = sr_wire_audio(out + (size_t)nout * out_slot, out_slot, SR_WIRE_AUDIO_IN, flags, c->wire_id,
                                  seq, ts, plain + r.payload_offset, (size_t)r.payload_length);
            if (w < 0) {
                c->callback_errors++; /* as the Python path: encode_audio raised in the call's callback */
                break;
            }
            if (barge == 2) { /* after the send, as _on_rtp: nothing plays, the next playback starts afresh */
                c->idle_seen = 1;
                c->gate_mode = SR_GATE_PYTHON;
            }
            out_lengths[nout] = w;
            out_slots[nout] = f->slot;
            out_arrival[nout] = arrival_ns;
            nout++;
            c->to_inference++;
            c->batch_count++;
        } while (0);
        if (to_python) {
            if (c != NULL) c->deferred_gen = gen;
            if (ndeferred < SR_BATCH_MAX) memcpy(deferred[ndeferred++], key, SR_KEY_LEN);
        } else {
            decisions[i] = SR_TO_C;
            sent[1]++;
        }
    }
    if (fd >= 0 && nout > 0) {
        void *peers[SR_BATCH_MAX];
        int32_t peer_lengths[SR_BATCH_MAX];
        for (int k = 0; k < nout; k++) {
            sr_call *c = &t->calls[out_slots[k]];
            peers[k] = c->peer;
            peer_lengths[k] = c->peer_len;
        }
        sent[0] = send_batch(fd, out, out_slot, out_lengths, peers, peer_lengths, nout);
    }
    if (nout > 0) { /* dwell: each datagram's arrival until the batch left (or was handed back) */
        int64_t done = sr_clock_now(t->clock, SR_CLOCK_DONE);
        for (int k = 0; k < nout; k++) {
            sr_dwell *dw = t->calls[out_slots[k]].dwell;
            if (dw != NULL) sr_dwell_observe(dw, done - out_arrival[k]);
        }
    }
    return nout;
}

/* ---- The per-batch outbound path (issue 17, step 2): AUDIO_OUT -> caller SRTP without Python -----------
 *
 * A batch read from the inference socket goes through sr_batch_out. An AUDIO_OUT whose call has an entry
 * (sr_out, found by the wire call id) and whose playout passes the frame straight through (nothing queued,
 * no timer, not paused, not interrupted, no CLEAR pending, not closed, the timeline within `lead` of now)
 * is finished here: the link's header and order checks (relay/inference_link.py RelayLink.datagram_received),
 * the playout timeline (relay/playout.py Playout._push_frame's pass-through branch, _fell_behind, _send_now,
 * _timestamp_at), our RTP header with the stream's extension block, SRTP protect, every counter, and one
 * sendmmsg toward the callers. Everything else is left for Python in order (decisions[i] = SR_TO_PYTHON):
 * once a datagram naming a call goes to Python, every later one naming it in the batch goes too. The
 * playout and stream state C touches (sr_playout, sr_stream) is the one copy: Python reads and writes
 * the same structs, so both paths can alternate frame by frame. Nothing is allocated here.
 */

#define SR_WIRE_AUDIO_OUT 4 /* relay/inference/wire.py MsgType.AUDIO_OUT (tests check) */
#define SR_WIRE_MAX_DATAGRAM 1400
#define SR_FLAG_MARKER 0x0001
#define SR_FRAME_NS 20000000LL
#define SR_SAMPLES_PER_FRAME 960
#define SR_CLOCK_RATE 48000
#define SR_EXT_MAX 32
#define SR_ID_PROBE_MAX 4096

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
    int32_t queued; /* items (frames and marks) in Python's queue */
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

/* A call's frames waiting for their timeline slot, held in C (relay/playout.py Playout's queue while it
 * holds frames only: Python takes them back, in order, before anything else touches the queue). */
#define SR_RING_FRAMES 64 /* 1.28 s of audio: a longer burst's tail goes to Python's queue */
#define SR_RING_SLOT 320  /* payload bytes per held frame (Opus at up to 128 kbit/s): longer ones, Python */
#define SR_PLAYING_ALWAYS (1LL << 62) /* relay/playout.py PLAYING_ALWAYS */

typedef struct {
    int64_t arrival_ns;
    uint32_t seq;
    uint32_t timestamp;
    int32_t length;
    int32_t continues;       /* _Frame.continues */
    int32_t starts_response; /* _Frame.starts_response */
    uint8_t payload[SR_RING_SLOT];
} sr_frame;

typedef struct {
    int32_t head;
    int32_t count;
    int32_t listed; /* in the table's paced list */
    sr_frame frames[SR_RING_FRAMES];
} sr_ring;

typedef struct {
    int32_t enabled;        /* Python: C may finish this call's AUDIO_OUT */
    int32_t handle;         /* Python's index of this entry */
    uint64_t wire_id;
    uint8_t peer_key[SR_KEY_LEN]; /* inference's address (sr_flow_key): AUDIO_OUT must come from it */
    int32_t has_last_audio; /* the link's in-order check (CallState.audio_in_order) */
    uint32_t last_audio_seq;
    int32_t heard;          /* something came from the agent (the link's liveness sweep reads and clears it) */
    sr_playout *playout;
    sr_stream *stream;
    int64_t *playing_until; /* the inbound slot's (barge-in), or NULL */
    uintptr_t tx;           /* the tx srtp_t */
    int32_t payload_type;
    uint32_t ssrc;
    int32_t max_payload;
    uint8_t ext[SR_EXT_MAX]; /* the extension block while the MID is not acknowledged */
    int32_t ext_len;
    uint8_t remote[SR_RECV_NAME_MAX]; /* the caller's sockaddr */
    int32_t remote_len;
    int64_t deferred_gen;
    int64_t frames_in;      /* counters not yet folded into the call's */
    int64_t packets_out;
    int64_t bytes_out;
    sr_dwell *dwell;        /* the call's outbound dwell histogram (NULL: none observed here) */
    sr_ring *ring;          /* frames C paces for this call (NULL: C passes frames through only) */
} sr_out;

typedef struct {
    uint64_t id; /* 0: empty (wire call ids are never 0) */
    sr_out *out;
} sr_id;

typedef struct {
    sr_id *ids;
    uint32_t capacity; /* a power of two */
    uint32_t used;
    int64_t gen;
    uintptr_t protect;  /* libsrtp's srtp_protect (pylibsrtp's copy) */
    size_t reserve;     /* trailer room protect needs (SRTP_MAX_TRAILER_LEN) */
    int64_t datagrams_in; /* link counters not yet folded into its WireStats */
    int64_t audio_late;
    sr_clock_fn clock;    /* NULL: CLOCK_MONOTONIC */
    sr_out **paced;       /* entries whose ring may hold frames (sr_pace visits them) */
    int32_t npaced;
    int32_t paced_capacity;
    int64_t pace_due;     /* when sr_pace next has a frame to send (INT64_MAX: none held) */
} sr_out_table;

static uint32_t id_hash(uint64_t id) {
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    return (uint32_t)id;
}

static int32_t id_find(const sr_out_table *t, uint64_t id) {
    if (id == 0) return -1;
    uint32_t mask = t->capacity - 1;
    uint32_t i = id_hash(id) & mask;
    uint32_t limit = t->capacity < SR_ID_PROBE_MAX ? t->capacity : SR_ID_PROBE_MAX;
    for (uint32_t n = 0; n < limit; n++, i = (i + 1) & mask) {
        if (t->ids[i].id == 0) return -1;
        if (t->ids[i].id == id) return (int32_t)i;
    }
    return -1;
}

/* Enter or update the call `id`: 0, or -1 (a bad table, id 0, or too full: the call stays in Python). */
int sr_out_set(sr_out_table *t, uint64_t id, sr_out *out) {
    if (t->capacity == 0 || (t->capacity & (t->capacity - 1)) != 0 || id == 0 || out == NULL) return -1;
    int32_t at = id_find(t, id);
    if (at >= 0) {
        t->ids[at].out = out;
        return 0;
    }
    if (t->used >= t->capacity / 2) return -1;
    uint32_t mask = t->capacity - 1;
    uint32_t i = id_hash(id) & mask;
    uint32_t limit = t->capacity < SR_ID_PROBE_MAX ? t->capacity : SR_ID_PROBE_MAX;
    for (uint32_t n = 0; n < limit; n++, i = (i + 1) & mask) {
        if (t->ids[i].id == 0) {
            t->ids[i].id = id;
            t->ids[i].out = out;
            t->used++;
            return 0;
        }
    }
    return -1;
}

/* The entry of `id`, or NULL (tests). */
sr_out *sr_out_get(const sr_out_table *t, uint64_t id) {
    if (t->capacity == 0 || (t->capacity & (t->capacity - 1)) != 0) return NULL;
    int32_t at = id_find(t, id);
    return at < 0 ? NULL : t->ids[at].out;
}

/* Remove `id` (its call ended or left C), keeping linear probing's chains whole: 1, or 0 if absent. */
int sr_out_drop(sr_out_table *t, uint64_t id) {
    if (t->capacity == 0 || (t->capacity & (t->capacity - 1)) != 0) return 0;
    int32_t at = id_find(t, id);
    if (at < 0) return 0;
    uint32_t mask = t->capacity - 1;
    uint32_t hole = (uint32_t)at;
    t->ids[hole].id = 0;
    t->ids[hole].out = NULL;
    t->used--;
    uint32_t j = hole;
    for (uint32_t n = 0; n < t->capacity; n++) {
        j = (j + 1) & mask;
        sr_id *e = &t->ids[j];
        if (e->id == 0) break;
        uint32_t home = id_hash(e->id) & mask;
        int between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!between) {
            t->ids[hole] = *e;
            e->id = 0;
            e->out = NULL;
            hole = j;
        }
    }
    return 1;
}

static uint64_t be64(const unsigned char *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }

/* relay/playout.py Playout._timestamp_at: (ts0 + floor((t - t0) * 48000 / 1e9)) mod 2^32. */
uint32_t sr_timestamp_at(const sr_playout *p, int64_t t_ns) {
    int64_t samples = floor_div((__int128)(t_ns - p->t0) * SR_CLOCK_RATE, 1000000000);
    return (uint32_t)((uint64_t)p->ts0 + (uint64_t)samples);
}

/* The link's part of taking an AUDIO_OUT (RelayLink.datagram_received, CallState.audio_in_order). */
static void link_commit(sr_out_table *t, sr_out *o, uint32_t seq) {
    t->datagrams_in++;
    o->heard = 1;
    o->has_last_audio = 1;
    o->last_audio_seq = seq;
    o->frames_in++;
}

/* Our RTP header (the stream's next sequence, the RTP timestamp of the slot `timeline`, the marker on a
 * new talk spurt, the extension block while the MID is not acknowledged) and SRTP protect of `payload`
 * into `buffer`: the datagram's length, or < 0 when protect refused it (nothing changed). */
static int play_frame(const sr_out_table *t, sr_out *o, int64_t timeline, int spurt, const unsigned char *payload,
                      int32_t payload_length, unsigned char *buffer, size_t out_slot) {
    sr_stream *s = o->stream;
    int n = sr_protect_rtp(t->protect, o->tx, buffer, out_slot, t->reserve, o->payload_type, s->sequence,
                           sr_timestamp_at(o->playout, timeline), o->ssrc, spurt, o->ext,
                           s->mid_acked ? 0 : (size_t)o->ext_len, payload, (size_t)payload_length);
    return n;
}

/* A frame left in the slot `timeline` (Playout._send_now, the call's _send_frame, the stream's counters):
 * when its dwell counts from (the slot less `lead`). `sent` 0: protect refused it, the timeline moves on. */
static int64_t play_commit(sr_out *o, int64_t timeline, uint32_t seq, int32_t payload_length, int64_t send_ns,
                           int sent) {
    sr_playout *p = o->playout;
    sr_stream *s = o->stream;
    int64_t due = timeline - p->lead_ns;
    p->new_spurt = 0;
    p->timeline_ns = timeline + SR_FRAME_NS;
    p->frames_sent++;
    p->response_frames++;
    p->response_seq = seq;
    if (sent) {
        s->last_timestamp = sr_timestamp_at(p, timeline);
        s->sequence = (s->sequence + 1) & 0xFFFF;
        s->packets++;
        s->octets += payload_length;
        s->last_send_ns = send_ns;
        o->packets_out++;
        o->bytes_out += payload_length;
    }
    if (o->playing_until != NULL) *o->playing_until = p->timeline_ns + p->tail_ns;
    return due;
}

/* Send the frames sr_batch_out or sr_pace made toward their callers (one sendmmsg when fd >= 0; sent[0]
 * how many the kernel took), then observe each one's dwell: from its due time until its datagram left (or
 * was handed back to Python to send). */
static void send_outs(const sr_out_table *t, int fd, unsigned char *out, size_t out_slot,
                      const int32_t *out_lengths, sr_out *const *outs, const int64_t *out_due, int nout,
                      int32_t *sent) {
    if (fd >= 0 && nout > 0) {
        void *peers[SR_BATCH_MAX];
        int32_t peer_lengths[SR_BATCH_MAX];
        for (int k = 0; k < nout; k++) {
            peers[k] = outs[k]->remote;
            peer_lengths[k] = outs[k]->remote_len;
        }
        sent[0] = send_batch(fd, out, out_slot, out_lengths, peers, peer_lengths, nout);
    }
    if (nout > 0) {
        int64_t done = sr_clock_now(t->clock, SR_CLOCK_DONE);
        for (int k = 0; k < nout; k++)
            if (outs[k]->dwell != NULL) sr_dwell_observe(outs[k]->dwell, done - out_due[k]);
    }
}

/* The batch the inference socket's recvmmsg left in (buffers, lengths, names): see the section comment.
 * `now_ns` is the playout clock for the whole batch and `send_ns` the stream's send time; arrivals[i]
 * (NULL: now_ns for all) when datagram i arrived, in the same clock (sr_arrivals). Protected datagrams go
 * to out + k * out_slot (out_lengths[k]; out_handles[k] the entry's handle; out_due[k] the time its dwell
 * counts from: its arrival, or its slot on the timeline if later), k < the return value; when fd >= 0
 * they leave in one sendmmsg from here and sent[0] says how many the kernel took (Python sends the rest in
 * order); sent[1] is how many datagrams C finished. -1: bad arguments. */
int sr_batch_out(sr_out_table *t, const unsigned char *buffers, size_t slot_size, const unsigned char *names,
                 size_t name_slot, const int32_t *lengths, const int32_t *name_lengths, int count,
                 int64_t now_ns, int64_t send_ns, const int64_t *arrivals, int8_t *decisions,
                 unsigned char *out, size_t out_slot, int32_t *out_lengths, int32_t *out_handles,
                 int64_t *out_due, int fd, int32_t *sent) {
    sent[0] = sent[1] = 0;
    if (count < 0 || count > SR_BATCH_MAX || out_slot < SR_SRTP_BUFFER || slot_size > SR_RECV_SLOT_MAX
        || name_slot > SR_RECV_NAME_MAX || t->capacity == 0 || (t->capacity & (t->capacity - 1)) != 0
        || t->protect == 0 || t->reserve > 256)
        return -1;
    int64_t gen = ++t->gen;
    sr_out *outs[SR_BATCH_MAX];
    int nout = 0;
    for (int i = 0; i < count; i++) {
        decisions[i] = SR_TO_PYTHON;
        int32_t length = lengths[i];
        if (length < SR_WIRE_HEADER || length > (int32_t)slot_size) continue; /* cut, or no call id: Python */
        const unsigned char *d = buffers + (size_t)i * slot_size;
        int32_t at = id_find(t, be64(d + 4));
        if (at < 0) continue; /* no entry: nothing of that call can be overtaken */
        sr_out *o = t->ids[at].out;
        if (o == NULL || o->deferred_gen == gen) continue;
        int to_python = 1;
        do {
            sr_playout *p = o->playout;
            sr_stream *s = o->stream;
            if (!o->enabled || p == NULL || s == NULL || o->tx == 0 || o->remote_len <= 0
                || o->remote_len > SR_RECV_NAME_MAX || o->ext_len < 0 || o->ext_len > SR_EXT_MAX)
                break;
            if (length <= SR_WIRE_HEADER || length > SR_WIRE_MAX_DATAGRAM || d[0] != SR_WIRE_VERSION
                || d[1] != SR_WIRE_AUDIO_OUT)
                break;
            int flags = be16(d + 2);
            if (flags & ~SR_FLAG_MARKER) break;
            unsigned char key[SR_KEY_LEN];
            int32_t name_length = name_lengths[i];
            if (name_length < 0 || (size_t)name_length > name_slot
                || sr_flow_key(names + (size_t)i * name_slot, (size_t)name_length, key) < 0
                || memcmp(key, o->peer_key, SR_KEY_LEN) != 0)
                break;
            uint32_t seq = be32(d + 12), ts = be32(d + 16);
            int marker = flags & SR_FLAG_MARKER;
            if (o->has_last_audio && (int32_t)(seq - o->last_audio_seq) <= 0) {
                t->datagrams_in++; /* late or repeated: dropped, as the link drops it */
                t->audio_late++;
                o->heard = 1;
                to_python = 0;
                break;
            }
            if (p->closed || p->has_clear_before || p->interrupted || p->queued || p->timer_pending
                || p->paused)
                break;
            int32_t payload_length = length - SR_WIRE_HEADER;
            if (payload_length > o->max_payload) break; /* Python raises and counts it */
            int continues = !marker && p->has_next_position && ts == p->next_position;
            sr_ring *r = o->ring;
            int64_t timeline = p->timeline_ns;
            int spurt = p->new_spurt, caught = 0;
            int hold = r != NULL && r->count > 0; /* frames wait: this one waits behind them */
            if (!hold && timeline < now_ns) {
                if (continues && now_ns - timeline <= p->catch_up_ns)
                    caught = 1;
                else {
                    timeline = now_ns;
                    spurt = 1;
                }
            }
            if (!hold && timeline - now_ns > p->lead_ns) {
                if (r == NULL) break; /* it must wait: Python queues it and sets a timer */
                hold = 1;
            }
            if (hold) { /* Playout._push_frame's queueing branch, into the call's ring */
                if (r->count >= SR_RING_FRAMES || payload_length > SR_RING_SLOT
                    || (!r->listed && t->npaced >= t->paced_capacity))
                    break; /* Python takes the ring back and queues it there */
                link_commit(t, o, seq);
                if (r->count == 0) { /* pump runs over the new head at once */
                    if (marker) p->response_frames = 0;
                    int64_t due = p->timeline_ns - p->lead_ns;
                    if (due < t->pace_due) t->pace_due = due;
                }
                p->next_position = ts + SR_SAMPLES_PER_FRAME;
                p->has_next_position = 1;
                sr_frame *f = &r->frames[(r->head + r->count) % SR_RING_FRAMES];
                f->arrival_ns = now_ns; /* the Python path's clock at the push */
                f->seq = seq;
                f->timestamp = ts;
                f->length = payload_length;
                f->continues = continues;
                f->starts_response = marker;
                memcpy(f->payload, d + SR_WIRE_HEADER, (size_t)payload_length);
                r->count++;
                if (!r->listed) {
                    t->paced[t->npaced++] = o;
                    r->listed = 1;
                }
                if (o->playing_until != NULL) *o->playing_until = SR_PLAYING_ALWAYS;
                to_python = 0;
                break;
            }
            int n = play_frame(t, o, timeline, spurt, d + SR_WIRE_HEADER, payload_length,
                               out + (size_t)nout * out_slot, out_slot);
            if (n < 0) break; /* refused: Python tries again and counts the failure */
            /* sent: commit, in the order the Python path changes the same fields */
            link_commit(t, o, seq);
            if (caught) p->frames_caught_up++;
            if (marker) p->response_frames = 0;
            p->next_position = ts + SR_SAMPLES_PER_FRAME;
            p->has_next_position = 1;
            int64_t due = play_commit(o, timeline, seq, payload_length, send_ns, 1);
            out_lengths[nout] = n;
            out_handles[nout] = o->handle;
            int64_t arrival = arrivals != NULL ? arrivals[i] : now_ns;
            out_due[nout] = due > arrival ? due : arrival;
            outs[nout] = o;
            nout++;
            to_python = 0;
        } while (0);
        if (to_python)
            o->deferred_gen = gen;
        else {
            decisions[i] = SR_TO_C;
            sent[1]++;
        }
    }
    send_outs(t, fd, out, out_slot, out_lengths, outs, out_due, nout, sent);
    return nout;
}

/* ---- Pacing in C (issue 17): the frames of a TTS burst leave on their timeline slots without Python ------
 *
 * sr_batch_out holds a frame that must wait for its slot in the call's ring (sr_ring) instead of leaving it
 * to Python, when Python holds nothing for the call. sr_pace, run from one shared wake-up at t->pace_due,
 * sends every held frame whose slot is within `lead` of now exactly as relay/playout.py Playout.pump,
 * _fell_behind and _send_now do (a new response's counter, catch-up or a new talk spurt, the RTP
 * timestamp, dwell from max(arrival, slot - lead), the counters, playing_until), all in one sendmmsg, and
 * sets t->pace_due to the next slot. A paused call's frames stay (barge-in: nothing leaves until Python
 * resumes or flushes, which first takes the ring back in order). */

/* Up to `max_out` datagrams (<= SR_BATCH_MAX) made as sr_batch_out makes them (out, out_lengths,
 * out_handles, out_due); sent[0] how many the kernel took when fd >= 0. -1: bad arguments. */
int sr_pace(sr_out_table *t, int64_t now_ns, int64_t send_ns, unsigned char *out, size_t out_slot,
            int32_t *out_lengths, int32_t *out_handles, int64_t *out_due, int max_out, int fd, int32_t *sent) {
    sent[0] = sent[1] = 0;
    if (max_out < 1 || max_out > SR_BATCH_MAX || out_slot < SR_SRTP_BUFFER || t->protect == 0
        || t->reserve > 256 || t->npaced < 0 || t->npaced > t->paced_capacity)
        return -1;
    sr_out *outs[SR_BATCH_MAX];
    int nout = 0;
    int64_t next = INT64_MAX;
    int32_t keep = 0;
    for (int32_t i = 0; i < t->npaced; i++) {
        sr_out *o = t->paced[i];
        sr_ring *r = o->ring;
        sr_playout *p = o->playout;
        if (r == NULL || r->count <= 0 || p == NULL || o->stream == NULL) {
            if (r != NULL) r->listed = 0;
            continue; /* taken back or gone: off the list */
        }
        t->paced[keep++] = o;
        if (p->paused || p->closed || !o->enabled) continue; /* held until Python takes the ring back */
        for (int k = 0; k < SR_RING_FRAMES && r->count > 0; k++) {
            if (nout >= max_out) { /* the rest next round, at once */
                next = now_ns;
                break;
            }
            sr_frame *f = &r->frames[r->head];
            if (f->starts_response) p->response_frames = 0;
            int spurt = p->new_spurt;
            if (p->timeline_ns < now_ns) { /* _fell_behind */
                if (f->continues && now_ns - p->timeline_ns <= p->catch_up_ns)
                    p->frames_caught_up++;
                else {
                    p->timeline_ns = now_ns;
                    p->new_spurt = spurt = 1;
                }
            }
            int64_t timeline = p->timeline_ns;
            if (timeline - now_ns > p->lead_ns) {
                if (timeline - p->lead_ns < next) next = timeline - p->lead_ns;
                break;
            }
            int n = play_frame(t, o, timeline, spurt, f->payload, f->length, out + (size_t)nout * out_slot,
                               out_slot);
            int64_t due = play_commit(o, timeline, f->seq, f->length, send_ns, n >= 0);
            if (n >= 0) {
                out_lengths[nout] = n;
                out_handles[nout] = o->handle;
                out_due[nout] = due > f->arrival_ns ? due : f->arrival_ns;
                outs[nout] = o;
                nout++;
            }
            r->head = (r->head + 1) % SR_RING_FRAMES;
            r->count--;
        }
        if (r->count > 0 && o->playing_until != NULL) *o->playing_until = SR_PLAYING_ALWAYS;
    }
    t->npaced = keep;
    t->pace_due = next;
    send_outs(t, fd, out, out_slot, out_lengths, outs, out_due, nout, sent);
    sent[1] = nout;
    return nout;
}

/* Forget `o` (its call closes or leaves C): off the paced list, its ring emptied. */
void sr_pace_forget(sr_out_table *t, sr_out *o) {
    int32_t keep = 0;
    for (int32_t i = 0; i < t->npaced && i < t->paced_capacity; i++)
        if (t->paced[i] != o) t->paced[keep++] = t->paced[i];
    t->npaced = keep;
    if (o->ring != NULL) {
        o->ring->count = 0;
        o->ring->head = 0;
        o->ring->listed = 0;
    }
}

/* ---- Draining a socket batch after batch (issue 17, step 3): Python once per wake-up --------------------
 *
 * sr_drain_in and sr_drain_out do what the shared port's and the inference socket's readers did per batch
 * in Python (relay/media/shared_port.py BatchReader, relay/inference_link.py _NativeLinkReader): recvmmsg,
 * then sr_batch_in / sr_batch_out over the batch (which send and observe dwell), then the next batch, up
 * to `turns` recvmmsg calls. They stop early, as the readers do, when a batch is short (the socket is
 * empty) and hand the batch back when anything in it is Python's: a datagram C did not finish, or a
 * datagram C made that the socket did not take. Earlier batches of the same call were finished and sent
 * whole, so nothing Python holds is overtaken (per call, and control behind audio, as per batch). */

#define SR_DRAIN_DONE 0   /* the socket is empty (or the turns are used) and everything was finished here */
#define SR_DRAIN_PYTHON 1 /* the last batch (d->n datagrams) has something for Python: see decisions, sent */
#define SR_DRAIN_BAD 2    /* bad arguments */

typedef struct {
    int32_t recv_fd;   /* the socket read */
    int32_t batch;     /* datagrams per recvmmsg */
    unsigned char *buffers; /* RecvBatch's buffers */
    size_t slot;
    unsigned char *names;
    size_t name_slot;
    int32_t *lengths;
    int32_t *name_lengths;
    unsigned char *plain; /* inbound: the unprotect scratch */
    int8_t *decisions;
    unsigned char *out;
    size_t out_slot;
    int32_t *out_lengths;
    int32_t *out_index;   /* inbound: the call slot; outbound: the entry's handle */
    int64_t *out_due;     /* outbound: when each datagram was due */
    int64_t *stamps;      /* RecvBatch's kernel receive stamps (NULL: none asked for, the batch's time) */
    int64_t *arrivals;    /* RecvBatch's arrival of each datagram of the last batch (sr_arrivals) */
    int32_t send_fd;      /* set by Python per call: where C sends (-1: the datagrams go back to Python) */
    int32_t sent[2];      /* of the last batch: datagrams the kernel took, datagrams C finished */
    int32_t n;            /* datagrams in the last batch (0: empty, negative: -errno of recvmmsg) */
    int32_t nout;         /* datagrams C made of the last batch */
    int64_t arrival_ns;   /* when the last batch was read (inbound) / the playout clock for it (outbound);
                           * each datagram's own arrival is in arrivals */
    int32_t calls;        /* recvmmsg calls made, this call */
    int32_t batches;      /* batches run, this call */
    int64_t finished;     /* datagrams C finished, this call */
    int64_t delivered;    /* datagrams of batches C finished whole, this call (the readers' count) */
    int64_t made;         /* datagrams C made, this call */
} sr_drain;

static int drain_start(sr_drain *d, int turns) {
    d->calls = d->batches = 0;
    d->finished = d->delivered = d->made = 0;
    d->n = d->nout = 0;
    d->sent[0] = d->sent[1] = 0;
    return turns < 1 || turns > 64 || d->batch < 1 || d->batch > SR_BATCH_MAX || d->arrivals == NULL;
}

/* After a batch: SR_DRAIN_PYTHON when something of it is Python's, -1 to go on, else SR_DRAIN_DONE. */
static int drain_step(sr_drain *d, int n, int nout) {
    d->batches++;
    d->nout = nout;
    d->made += nout;
    d->finished += d->sent[1];
    if (d->sent[1] != n || d->sent[0] != nout) return SR_DRAIN_PYTHON;
    d->delivered += n;
    return n < d->batch ? SR_DRAIN_DONE : -1;
}

/* The shared media port: up to `turns` batches through sr_batch_in. SR_DRAIN_DONE, SR_DRAIN_PYTHON, or
 * -errno when recvmmsg failed (d->n too: an ICMP error, say; the reader decides whether to go on). */
int sr_drain_in(sr_table *t, sr_drain *d, int turns) {
    if (drain_start(d, turns) || d->plain == NULL) return SR_DRAIN_BAD;
    for (int turn = 0; turn < turns; turn++) {
        int n = sr_recv_batch(d->recv_fd, d->buffers, d->slot, d->names, d->name_slot, d->lengths,
                              d->name_lengths, d->batch, d->stamps);
        d->calls++;
        d->n = n;
        if (n <= 0) return n;
        d->arrival_ns = sr_arrivals(t->clock, d->stamps, n, d->arrivals);
        int nout = sr_batch_in(t, d->buffers, d->slot, d->names, d->name_slot, d->lengths, d->name_lengths, n,
                               d->arrivals, d->plain, d->decisions, d->out, d->out_slot, d->out_lengths,
                               d->out_index, d->send_fd, d->sent);
        if (nout < 0) return SR_DRAIN_BAD;
        int status = drain_step(d, n, nout);
        if (status >= 0) return status;
    }
    return SR_DRAIN_DONE;
}

/* The inference socket: up to `turns` batches through sr_batch_out, as sr_drain_in. The playout clock and
 * the send time are read per batch (one reading for both on CLOCK_MONOTONIC); each datagram's dwell counts
 * from its own arrival (sr_arrivals). */
int sr_drain_out(sr_out_table *t, sr_drain *d, int turns) {
    if (drain_start(d, turns) || d->out_due == NULL) return SR_DRAIN_BAD;
    for (int turn = 0; turn < turns; turn++) {
        int n = sr_recv_batch(d->recv_fd, d->buffers, d->slot, d->names, d->name_slot, d->lengths,
                              d->name_lengths, d->batch, d->stamps);
        d->calls++;
        d->n = n;
        if (n <= 0) return n;
        int64_t now = sr_arrivals(t->clock, d->stamps, n, d->arrivals);
        int64_t send = t->clock != NULL ? t->clock(SR_CLOCK_SEND) : now;
        d->arrival_ns = now;
        int nout = sr_batch_out(t, d->buffers, d->slot, d->names, d->name_slot, d->lengths, d->name_lengths,
                                n, now, send, d->arrivals, d->decisions, d->out, d->out_slot, d->out_lengths, d->out_index,
                                d->out_due, d->send_fd, d->sent);
        if (nout < 0) return SR_DRAIN_BAD;
        int status = drain_step(d, n, nout);
        if (status >= 0) return status;
    }
    return SR_DRAIN_DONE;
}
