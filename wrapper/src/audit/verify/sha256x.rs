//! SHA-256 of two independent messages at once: on x86-64 with the SHA extensions (detected
//! at run time) their blocks go through the SHA-NI rounds interleaved, so the second hash
//! runs in the latency of the first (one stream leaves the unit idle most of each round:
//! two streams take about the time of one). Elsewhere, one message after the other through
//! `sha2::compress256`. The verifier hashes two lines' chain hashes, or a line's chain hash
//! and its Merkle leaf hash, per call.
//!
//! A message is a starting state (the IV, or an HMAC key's inner or outer midstate) with the
//! bytes already compressed into it (a multiple of 64), then the concatenation of up to
//! [`MAX_PARTS`] slices; the padding is SHA-256's (FIPS 180-4 §5.1.1) over the whole length.

use sha2::digest::generic_array::GenericArray;

/// SHA-256's initial hash value (FIPS 180-4 §5.3.3).
pub(crate) const IV: State =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// The eight working words of SHA-256.
pub(crate) type State = [u32; 8];

/// The most slices a message is made of.
pub(crate) const MAX_PARTS: usize = 5;

/// One message: `state` after `done` bytes (a multiple of 64), then `parts` in order.
#[derive(Clone, Copy)]
pub(crate) struct Msg<'a> {
    pub state: State,
    pub done: u64,
    pub parts: [&'a [u8]; MAX_PARTS],
}

impl<'a> Msg<'a> {
    /// SHA-256 of the concatenation of `parts` (at most [`MAX_PARTS`]).
    pub fn new(parts: &[&'a [u8]]) -> Self {
        Self::resume(IV, 0, parts)
    }

    /// Hashing continued from `state` after `done` bytes (a multiple of 64).
    pub fn resume(state: State, done: u64, parts: &[&'a [u8]]) -> Self {
        debug_assert!(done % 64 == 0 && parts.len() <= MAX_PARTS);
        let mut p: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
        p[..parts.len()].copy_from_slice(parts);
        Msg { state, done, parts: p }
    }
}

/// The message's blocks, padding included, one at a time.
struct Blocks<'a> {
    parts: [&'a [u8]; MAX_PARTS],
    /// The current part and the offset in it.
    part: usize,
    off: usize,
    /// The message's whole length in bits, for the padding.
    bits: u64,
    /// The `0x80` after the data was written.
    marked: bool,
    /// The length was written: no block left.
    done: bool,
}

impl<'a> Blocks<'a> {
    fn new(m: &Msg<'a>) -> Self {
        let len: u64 = m.parts.iter().map(|p| p.len() as u64).sum::<u64>() + m.done;
        Blocks { parts: m.parts, part: 0, off: 0, bits: len.wrapping_mul(8), marked: false, done: false }
    }

    /// The next block: a 64-byte piece of a part when one is whole there, else assembled in
    /// `buf` (pieces of parts, the padding, the length). `None` after the last block.
    #[inline]
    fn next<'b>(&mut self, buf: &'b mut [u8; 64]) -> Option<&'b [u8; 64]>
    where
        'a: 'b,
    {
        if self.done {
            return None;
        }
        while self.part < MAX_PARTS && self.off == self.parts[self.part].len() {
            self.part += 1;
            self.off = 0;
        }
        if self.part < MAX_PARTS {
            let rest = &self.parts[self.part][self.off..];
            if let Some(whole) = rest.first_chunk::<64>() {
                self.off += 64;
                return Some(whole);
            }
        }
        let mut n = 0;
        while n < 64 && self.part < MAX_PARTS {
            let rest = &self.parts[self.part][self.off..];
            let take = rest.len().min(64 - n);
            buf[n..n + take].copy_from_slice(&rest[..take]);
            n += take;
            self.off += take;
            if self.off == self.parts[self.part].len() {
                self.part += 1;
                self.off = 0;
            }
        }
        if n == 64 {
            return Some(buf);
        }
        if !self.marked {
            buf[n] = 0x80;
            n += 1;
            self.marked = true;
        }
        buf[n..].fill(0);
        if n <= 56 {
            buf[56..].copy_from_slice(&self.bits.to_be_bytes());
            self.done = true;
        }
        Some(buf)
    }
}

fn digest_of(state: &State) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// Compresses `block` into `state` with the `sha2` crate (its own SHA-NI or software code).
fn compress_one(state: &mut State, block: &[u8; 64]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

/// The SHA-256 of one message.
pub(crate) fn digest(m: &Msg<'_>) -> [u8; 32] {
    let mut state = m.state;
    let mut blocks = Blocks::new(m);
    let mut buf = [0u8; 64];
    while let Some(b) = blocks.next(&mut buf) {
        compress_one(&mut state, b);
    }
    digest_of(&state)
}

/// The SHA-256 of two messages, interleaved when the CPU has the SHA extensions.
pub(crate) fn digest2(a: &Msg<'_>, b: &Msg<'_>) -> [[u8; 32]; 2] {
    #[cfg(target_arch = "x86_64")]
    if ni::available() {
        // SAFETY: the CPU has the features `ni::digest2` is compiled for (checked just above).
        return unsafe { ni::digest2(a, b) };
    }
    [digest(a), digest(b)]
}

#[cfg(target_arch = "x86_64")]
mod ni {
    //! The SHA-NI rounds of two messages interleaved (after the `sha2` crate's one-stream
    //! `x86` backend, and Intel's "New Instructions Supporting the Secure Hash Algorithm on
    //! Intel Architecture Processors", 2013).

    use std::arch::x86_64::*;

    use super::{digest_of, Blocks, Msg, State};

    /// Whether the CPU has every feature `digest2` uses (cached by the standard library).
    #[inline]
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse2")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }

    /// The round constants, four per round group (FIPS 180-4 §4.2.2).
    static K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];

    /// A state in the instructions' layout: (ABEF, CDGH).
    type Lanes = [__m128i; 2];

    /// Four message words of the schedule from the sixteen before them.
    #[inline(always)]
    unsafe fn schedule(v0: __m128i, v1: __m128i, v2: __m128i, v3: __m128i) -> __m128i {
        // SAFETY (of every intrinsic below): only reached from `digest2`, which is compiled
        // with the features they need and called only when the CPU has them.
        unsafe {
            let t1 = _mm_sha256msg1_epu32(v0, v1);
            let t2 = _mm_alignr_epi8(v3, v2, 4);
            _mm_sha256msg2_epu32(_mm_add_epi32(t1, t2), v3)
        }
    }

    #[inline(always)]
    unsafe fn load(s: &State) -> Lanes {
        // SAFETY: `s` is 32 readable bytes; unaligned loads; features as in `schedule`.
        unsafe {
            let p = s.as_ptr().cast::<__m128i>();
            let dcba = _mm_loadu_si128(p);
            let efgh = _mm_loadu_si128(p.add(1));
            let cdab = _mm_shuffle_epi32(dcba, 0xB1);
            let efgh = _mm_shuffle_epi32(efgh, 0x1B);
            [_mm_alignr_epi8(cdab, efgh, 8), _mm_blend_epi16(efgh, cdab, 0xF0)]
        }
    }

    #[inline(always)]
    unsafe fn store(l: &Lanes) -> State {
        let mut s: State = [0; 8];
        // SAFETY: `s` is 32 writable bytes; unaligned stores; features as in `schedule`.
        unsafe {
            let feba = _mm_shuffle_epi32(l[0], 0x1B);
            let dchg = _mm_shuffle_epi32(l[1], 0xB1);
            let p = s.as_mut_ptr().cast::<__m128i>();
            _mm_storeu_si128(p, _mm_blend_epi16(feba, dchg, 0xF0));
            _mm_storeu_si128(p.add(1), _mm_alignr_epi8(dchg, feba, 8));
        }
        s
    }

    /// One block into each of `N` states, their rounds interleaved.
    #[inline(always)]
    unsafe fn compress<const N: usize>(st: &mut [Lanes; N], blocks: [&[u8; 64]; N]) {
        // SAFETY: each block is 64 readable bytes (unaligned loads); `K` is 256 bytes, read
        // 16 at a time at offsets up to 240; features as in `schedule`.
        unsafe {
            let mask = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0Bu64 as i64, 0x0405_0607_0001_0203u64 as i64);
            let save = *st;
            let mut w = [[_mm_setzero_si128(); 4]; N];
            for j in 0..N {
                let p = blocks[j].as_ptr().cast::<__m128i>();
                for (q, wq) in w[j].iter_mut().enumerate() {
                    *wq = _mm_shuffle_epi8(_mm_loadu_si128(p.add(q)), mask);
                }
            }
            macro_rules! group {
                ($r:expr, $a:expr, $b:expr, $c:expr, $d:expr) => {{
                    let kv = _mm_loadu_si128(K.as_ptr().add(4 * $r).cast::<__m128i>());
                    for j in 0..N {
                        if $r >= 4 {
                            w[j][$a] = schedule(w[j][$a], w[j][$b], w[j][$c], w[j][$d]);
                        }
                        let t1 = _mm_add_epi32(w[j][$a], kv);
                        st[j][1] = _mm_sha256rnds2_epu32(st[j][1], st[j][0], t1);
                        let t2 = _mm_shuffle_epi32(t1, 0x0E);
                        st[j][0] = _mm_sha256rnds2_epu32(st[j][0], st[j][1], t2);
                    }
                }};
            }
            macro_rules! four {
                ($r:expr) => {{
                    group!($r, 0, 1, 2, 3);
                    group!($r + 1, 1, 2, 3, 0);
                    group!($r + 2, 2, 3, 0, 1);
                    group!($r + 3, 3, 0, 1, 2);
                }};
            }
            four!(0);
            four!(4);
            four!(8);
            four!(12);
            for j in 0..N {
                st[j][0] = _mm_add_epi32(st[j][0], save[j][0]);
                st[j][1] = _mm_add_epi32(st[j][1], save[j][1]);
            }
        }
    }

    /// # Safety
    /// The CPU must have the SHA extensions, SSE2, SSSE3 and SSE4.1 ([`available`]).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) unsafe fn digest2(a: &Msg<'_>, b: &Msg<'_>) -> [[u8; 32]; 2] {
        let (mut ba, mut bb) = (Blocks::new(a), Blocks::new(b));
        let (mut bufa, mut bufb) = ([0u8; 64], [0u8; 64]);
        // SAFETY: the caller guarantees the features every function below is compiled for.
        unsafe {
            let mut st = [load(&a.state), load(&b.state)];
            loop {
                match (ba.next(&mut bufa), bb.next(&mut bufb)) {
                    (Some(x), Some(y)) => compress(&mut st, [x, y]),
                    (Some(x), None) => {
                        let mut one = [st[0]];
                        compress(&mut one, [x]);
                        while let Some(x) = ba.next(&mut bufa) {
                            compress(&mut one, [x]);
                        }
                        st[0] = one[0];
                        break;
                    }
                    (None, Some(y)) => {
                        let mut one = [st[1]];
                        compress(&mut one, [y]);
                        while let Some(y) = bb.next(&mut bufb) {
                            compress(&mut one, [y]);
                        }
                        st[1] = one[0];
                        break;
                    }
                    (None, None) => break,
                }
            }
            [digest_of(&store(&st[0])), digest_of(&store(&st[1]))]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    fn reference(parts: &[&[u8]]) -> [u8; 32] {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    /// Every length around the block and padding boundaries, split into parts every way a
    /// chain or leaf hash splits a line, hashed alone and in pairs of different lengths.
    #[test]
    fn digests_equal_the_sha2_crates_for_every_length_and_split() {
        let data: Vec<u8> = (0..700u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in (0..200).chain(300..330).chain(640..700) {
            let d = &data[..len];
            let cut = [len / 3, len / 2, len.saturating_sub(1)];
            let parts: [&[u8]; 5] = [&d[..cut[0]], &d[cut[0]..cut[1]], &[], &d[cut[1]..cut[2]], &d[cut[2]..]];
            let want = reference(&[d]);
            assert_eq!(digest(&Msg::new(&parts)), want, "len {len}");
            assert_eq!(digest(&Msg::new(&[d])), want, "len {len}");
            for other in [0, 1, 55, 56, 64, 119, 120, 500] {
                let o = &data[100..100 + other];
                let [x, y] = digest2(&Msg::new(&parts), &Msg::new(&[&[], o]));
                assert_eq!((x, y), (want, reference(&[o])), "len {len} with {other}");
                let [y, x] = digest2(&Msg::new(&[o]), &Msg::new(&parts));
                assert_eq!((x, y), (want, reference(&[o])), "len {len} after {other}");
            }
        }
    }

    /// HMAC as the verifier runs it: from the key's inner and outer midstates.
    #[test]
    fn resumed_midstates_give_hmac_sha256() {
        let key = b"an audit key of thirty-two bytes";
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let (mut inner, mut outer) = (IV, IV);
        compress_one(&mut inner, &ipad);
        compress_one(&mut outer, &opad);
        for msg in [&b""[..], b"abc", &[7u8; 300]] {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            m.update(msg);
            let want: [u8; 32] = m.finalize().into_bytes().into();
            let [i1, i2] = digest2(&Msg::resume(inner, 64, &[msg]), &Msg::resume(inner, 64, &[b"x", msg]));
            let [o1, _] = digest2(&Msg::resume(outer, 64, &[&i1]), &Msg::resume(outer, 64, &[&i2]));
            assert_eq!(o1, want);
        }
    }
}
