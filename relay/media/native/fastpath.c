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

/* Up to `count` datagrams from the non-blocking UDP socket `fd` in one recvmmsg(2) (the shared media
 * port: issue 17). Datagram i lands at buffers + i * slot with its length in lengths[i] (-1 when it was
 * longer than `slot` and cut: the caller drops it), its source address at names + i * name_slot with
 * its length in name_lengths[i]. Returns how many arrived, 0 when the socket is empty, or -errno (an
 * ICMP error queued on the socket, say: the next call goes on with the datagrams behind it). */
int sr_recv_batch(int fd, unsigned char *buffers, size_t slot, unsigned char *names, size_t name_slot,
                  int32_t *lengths, int32_t *name_lengths, int count) {
#ifndef __linux__
    (void)fd, (void)buffers, (void)slot, (void)names, (void)name_slot, (void)lengths, (void)name_lengths;
    (void)count;
    return -ENOSYS; /* no recvmmsg: the shared port reads with recvfrom (relay/media/shared_port.py) */
#else
    struct mmsghdr msgs[SR_RECV_MAX];
    struct iovec iov[SR_RECV_MAX];
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
    }
    int n = recvmmsg(fd, msgs, (unsigned int)count, MSG_DONTWAIT, NULL);
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        int cut = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || msgs[i].msg_len > slot;
        lengths[i] = cut ? -1 : (int32_t)msgs[i].msg_len;
        socklen_t name_length = msgs[i].msg_hdr.msg_namelen;
        name_lengths[i] = (int32_t)(name_length > name_slot ? name_slot : name_length);
    }
    return n;
#endif
}
