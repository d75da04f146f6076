//! The RFC 6962 / RFC 9162 Merkle tree over a trail's records (normative:
//! `docs/AUDIT_FORMAT.md`, "Merkle tree and checkpoints").
//!
//! - **Leaves** are the trail's record lines (segment headers excluded), in `seq` order: the
//!   leaf of record `seq` has index `seq − 1`, and its hash is
//!   `SHA-256(0x00 ‖ line)` where `line` is the line's bytes **without** its `\n`
//!   ([`leaf_hash`]); the bytes the hash chain covers, so a record's leaf can be computed
//!   from the line alone.
//! - **Nodes**: `SHA-256(0x01 ‖ left ‖ right)` ([`node_hash`]); the root of an empty tree
//!   is `SHA-256("")` ([`EMPTY_ROOT`]).
//! - [`CompactTree`] keeps only the roots of the perfect subtrees the size decomposes into
//!   (at most 64 hashes): what the writer needs to sign a checkpoint after every append.
//! - Proofs are made from a [`LeafSource`] (any slice of leaf hashes, or a [`MemoryTree`]
//!   that keeps every level and answers in O(log n) hashes) and checked without it:
//!   [`verify_inclusion`] and [`verify_consistency`] are the algorithms of RFC 9162
//!   §2.1.3.2 and §2.1.4.2.
//!
//! ```
//! use map_wrapper::audit::merkle::{inclusion_proof, leaf_hash, verify_inclusion, CompactTree};
//!
//! let leaves: Vec<_> = (0..5u8).map(|i| leaf_hash(&[i])).collect();
//! let mut tree = CompactTree::new();
//! for l in &leaves {
//!     tree.push(*l);
//! }
//! let proof = inclusion_proof(&leaves[..], 3, 5)?;
//! assert!(proof.len() <= 3); // ⌈log₂ 5⌉ hashes
//! verify_inclusion(&leaves[3], 3, 5, &proof, &tree.root())?;
//! # Ok::<(), map_wrapper::audit::merkle::MerkleError>(())
//! ```

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf, a node or a root.
pub type Hash = [u8; 32];

/// The root of the empty tree: `SHA-256("")` (RFC 6962 §2.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27,
    0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// The leaf hash of a record line given without its `\n`: `SHA-256(0x00 ‖ line)`.
pub fn leaf_hash(line: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(line);
    h.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MerkleError {
    /// A leaf index (or old size) outside the tree.
    #[error("index {index} is outside a tree of {size} leaves")]
    OutOfRange {
        /// The index or size asked for.
        index: u64,
        /// The tree's size.
        size: u64,
    },
    /// A consistency proof from a larger tree to a smaller one.
    #[error("old size {old} is larger than new size {new}")]
    SizeOrder {
        /// The old size.
        old: u64,
        /// The new size.
        new: u64,
    },
    /// A proof with too few or too many hashes for its sizes.
    #[error("the proof has the wrong number of hashes ({got}) for its tree sizes")]
    WrongLength {
        /// How many hashes the proof has.
        got: usize,
    },
    /// The proof's hashes do not lead to the expected root(s).
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,
    /// The leaf source could not produce a hash (a short or unreadable trail).
    #[error("leaf source: {0}")]
    Source(String),
}

/// Where proofs read leaf hashes from: a slice of hashes, a [`MemoryTree`], or a trail.
///
/// Only [`len`](Self::len) and [`leaf`](Self::leaf) are required; a source that keeps the
/// roots of perfect subtrees (tiles, levels) overrides [`subtree`](Self::subtree) so proofs
/// cost O(log n) reads instead of O(n) hashes.
pub trait LeafSource {
    /// How many leaves the source has.
    fn len(&self) -> u64;

    /// Whether the source has no leaves.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hash of leaf `index` (`index < len()`).
    fn leaf(&self, index: u64) -> Result<Hash, MerkleError>;

    /// The root of the perfect subtree of `2^level` leaves starting at leaf
    /// `index << level`. Default: computed from the leaves (O(2^level) hashes).
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        let lo = index << level;
        leaves_root(self, lo, lo + (1u64 << level))
    }
}

impl LeafSource for [Hash] {
    fn len(&self) -> u64 {
        self.len() as u64
    }
    fn leaf(&self, index: u64) -> Result<Hash, MerkleError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.get(i))
            .copied()
            .ok_or(MerkleError::OutOfRange { index, size: self.len() as u64 })
    }
}

impl LeafSource for Vec<Hash> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn leaf(&self, index: u64) -> Result<Hash, MerkleError> {
        self.as_slice().leaf(index)
    }
}

/// The largest power of two strictly below `n` (`n ≥ 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[lo:hi]) from leaves alone (the RFC's recursion).
fn leaves_root<S: LeafSource + ?Sized>(src: &S, lo: u64, hi: u64) -> Result<Hash, MerkleError> {
    match hi - lo {
        0 => Ok(EMPTY_ROOT),
        1 => src.leaf(lo),
        n => {
            let k = split_point(n);
            Ok(node_hash(&leaves_root(src, lo, lo + k)?, &leaves_root(src, lo + k, hi)?))
        }
    }
}

/// MTH(D[lo:hi]), using the source's perfect subtrees where the range is one.
fn range_root<S: LeafSource + ?Sized>(src: &S, lo: u64, hi: u64) -> Result<Hash, MerkleError> {
    let n = hi - lo;
    if n == 0 {
        return Ok(EMPTY_ROOT);
    }
    if n == 1 {
        return src.leaf(lo);
    }
    if n.is_power_of_two() && lo % n == 0 {
        let level = n.trailing_zeros();
        return src.subtree(level, lo >> level);
    }
    let k = split_point(n);
    Ok(node_hash(&range_root(src, lo, lo + k)?, &range_root(src, lo + k, hi)?))
}

/// The root of the first `size` leaves of `src`.
pub fn root<S: LeafSource + ?Sized>(src: &S, size: u64) -> Result<Hash, MerkleError> {
    if size > src.len() {
        return Err(MerkleError::OutOfRange { index: size, size: src.len() });
    }
    range_root(src, 0, size)
}

/// The inclusion proof (RFC 6962 `PATH`, RFC 9162 §2.1.3.1) of leaf `index` in the tree of
/// the first `size` leaves: at most ⌈log₂ size⌉ hashes, from the leaf's sibling up.
pub fn inclusion_proof<S: LeafSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if size > src.len() {
        return Err(MerkleError::OutOfRange { index: size, size: src.len() });
    }
    inclusion_ranges(index, size)?.into_iter().map(|(a, b)| range_root(src, a, b)).collect()
}

/// The leaf ranges `[lo, hi)` whose roots make up the inclusion proof of leaf `index` in a
/// tree of `size` leaves, in proof order (bottom-up). With [`StreamingProver`] a proof is
/// made in one pass over the leaves.
pub fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<(u64, u64)>, MerkleError> {
    if index >= size {
        return Err(MerkleError::OutOfRange { index, size });
    }
    // Walk down from the root, collecting the sibling ranges; the proof lists them bottom-up.
    let (mut lo, mut hi) = (0u64, size);
    let mut siblings = Vec::with_capacity(64 - size.leading_zeros() as usize);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            siblings.push((lo + k, hi));
            hi = lo + k;
        } else {
            siblings.push((lo, lo + k));
            lo += k;
        }
    }
    siblings.reverse();
    Ok(siblings)
}

/// The consistency proof (RFC 6962 `PROOF`, RFC 9162 §2.1.4.1) that the tree of the first
/// `new` leaves extends the tree of the first `old`: empty when `old` is 0 or equals `new`,
/// otherwise at most ⌈log₂ new⌉ + 1 hashes.
pub fn consistency_proof<S: LeafSource + ?Sized>(
    src: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if new > src.len() {
        return Err(MerkleError::OutOfRange { index: new, size: src.len() });
    }
    consistency_ranges(old, new)?.into_iter().map(|(a, b)| range_root(src, a, b)).collect()
}

/// The leaf ranges whose roots make up the consistency proof from `old` to `new` leaves,
/// in proof order.
pub fn consistency_ranges(old: u64, new: u64) -> Result<Vec<(u64, u64)>, MerkleError> {
    if old > new {
        return Err(MerkleError::SizeOrder { old, new });
    }
    let mut out = Vec::new();
    if old != 0 && old != new {
        subproof(old, 0, new, true, &mut out);
    }
    Ok(out)
}

/// RFC 6962 `SUBPROOF(m, D[lo:hi], b)` with `m` counted from `lo`, as ranges.
fn subproof(m: u64, lo: u64, hi: u64, whole: bool, out: &mut Vec<(u64, u64)>) {
    let n = hi - lo;
    if m == n {
        if !whole {
            out.push((lo, hi));
        }
        return;
    }
    let k = split_point(n);
    if m <= k {
        subproof(m, lo, lo + k, whole, out);
        out.push((lo + k, hi));
    } else {
        subproof(m - k, lo + k, hi, false, out);
        out.push((lo, lo + k));
    }
}

/// Makes proofs in one pass over the leaves, in O(log² n) memory: for a trail too large to
/// keep its leaf hashes in memory (`prove SEQ` over a trail on disk). Give it the ranges
/// ([`inclusion_ranges`], [`consistency_ranges`]), feed it every leaf hash in order, and
/// [`finish`](Self::finish) returns the proof.
///
/// ```
/// use map_wrapper::audit::merkle::{inclusion_proof, inclusion_ranges, leaf_hash, StreamingProver};
///
/// let leaves: Vec<_> = (0..100u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
/// let mut p = StreamingProver::new(inclusion_ranges(42, 100)?);
/// for l in &leaves {
///     p.push(*l);
/// }
/// assert_eq!(p.finish()?, inclusion_proof(&leaves[..], 42, 100)?);
/// # Ok::<(), map_wrapper::audit::merkle::MerkleError>(())
/// ```
#[derive(Debug, Clone)]
pub struct StreamingProver {
    ranges: Vec<(u64, u64)>,
    trees: Vec<CompactTree>,
    next: u64,
}

impl StreamingProver {
    /// A prover for the roots of `ranges`.
    pub fn new(ranges: Vec<(u64, u64)>) -> Self {
        let trees = vec![CompactTree::new(); ranges.len()];
        StreamingProver { ranges, trees, next: 0 }
    }

    /// The next leaf hash (leaf number `pushed so far`).
    pub fn push(&mut self, leaf: Hash) {
        let i = self.next;
        for (r, t) in self.ranges.iter().zip(&mut self.trees) {
            if r.0 <= i && i < r.1 {
                t.push(leaf);
            }
        }
        self.next += 1;
    }

    /// The roots of the ranges, in order: the proof. An error if fewer leaves were pushed
    /// than the ranges need.
    pub fn finish(self) -> Result<Vec<Hash>, MerkleError> {
        let need = self.ranges.iter().map(|r| r.1).max().unwrap_or(0);
        if self.next < need {
            return Err(MerkleError::OutOfRange { index: need, size: self.next });
        }
        Ok(self.trees.iter().map(CompactTree::root).collect())
    }
}

/// The root an inclusion proof leads to (RFC 9162 §2.1.3.2), or why it leads nowhere.
pub fn root_from_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash]) -> Result<Hash, MerkleError> {
    if index >= size {
        return Err(MerkleError::OutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(MerkleError::WrongLength { got: proof.len() });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::WrongLength { got: proof.len() });
    }
    Ok(r)
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if root_from_inclusion(leaf, index, size, proof)? == *root {
        Ok(())
    } else {
        Err(MerkleError::RootMismatch)
    }
}

/// Checks that the tree of `new` leaves with root `new_root` extends the tree of `old`
/// leaves with root `old_root` (RFC 9162 §2.1.4.2). When `old == new` the proof must be
/// empty and the roots equal; when `old == 0` the proof must be empty and `old_root` must
/// be [`EMPTY_ROOT`] (every tree extends the empty one).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if old > new {
        return Err(MerkleError::SizeOrder { old, new });
    }
    if old == new || old == 0 {
        if !proof.is_empty() {
            return Err(MerkleError::WrongLength { got: proof.len() });
        }
        let expected = if old == 0 { &EMPTY_ROOT } else { new_root };
        return if old_root == expected { Ok(()) } else { Err(MerkleError::RootMismatch) };
    }
    // `old` a power of two: its root is the first node of the path, implicitly.
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof.iter());
    let Some((&first, rest)) = path.split_first() else {
        return Err(MerkleError::WrongLength { got: 0 });
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return Err(MerkleError::WrongLength { got: proof.len() });
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::WrongLength { got: proof.len() });
    }
    if fr == *old_root && sr == *new_root {
        Ok(())
    } else {
        Err(MerkleError::RootMismatch)
    }
}

/// An append-only Merkle tree that keeps O(log n) state: the roots of the perfect subtrees
/// its size decomposes into (one per set bit of the size, largest first), so
/// [`push`](Self::push) is amortised O(1) hashes and [`root`](Self::root) O(log n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactTree {
    size: u64,
    /// Perfect-subtree roots, left (largest) to right (smallest).
    peaks: Vec<Hash>,
}

impl CompactTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tree of the given leaf hashes.
    pub fn from_leaves<'a>(leaves: impl IntoIterator<Item = &'a Hash>) -> Self {
        let mut t = Self::new();
        for l in leaves {
            t.push(*l);
        }
        t
    }

    /// How many leaves the tree has.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            // A set low bit is a perfect subtree of the same size as `h`, on its left.
            let left = self.peaks.pop().expect("one peak per set bit of the size");
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// Appends a record line (without its `\n`): `push(leaf_hash(line))`.
    pub fn push_line(&mut self, line: &[u8]) {
        self.push(leaf_hash(line));
    }

    /// The root hash (RFC 6962 MTH) of the tree as it is now.
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(last) = it.next() else { return EMPTY_ROOT };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// The perfect-subtree roots, largest first (the compact range `[0, size)`).
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }
}

/// A tree that keeps every level in memory (about 2·n hashes, 64 bytes a leaf), so
/// [`LeafSource::subtree`] is one lookup and every proof costs O(log n): for a verifier or
/// an auditor that proves many records of one trail.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    /// `levels[0]` are the leaves; `levels[l][i]` is the root of the perfect subtree of
    /// `2^l` leaves starting at `i << l` (complete subtrees only).
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        MemoryTree { levels: vec![Vec::new()] }
    }

    /// Appends a leaf hash, completing the perfect subtrees it closes.
    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut level = 0;
        while self.levels[level].len() % 2 == 0 {
            let n = self.levels[level].len();
            let h = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(h);
            level += 1;
        }
    }

    /// Appends a record line (without its `\n`).
    pub fn push_line(&mut self, line: &[u8]) {
        self.push(leaf_hash(line));
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        range_root(self, 0, LeafSource::len(self)).unwrap_or(EMPTY_ROOT)
    }
}

impl LeafSource for MemoryTree {
    fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }
    fn leaf(&self, index: u64) -> Result<Hash, MerkleError> {
        self.subtree(0, index)
    }
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, MerkleError> {
        self.levels
            .get(level as usize)
            .and_then(|l| usize::try_from(index).ok().and_then(|i| l.get(i)))
            .copied()
            .ok_or(MerkleError::OutOfRange { index: index << level, size: LeafSource::len(self) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(h: &Hash) -> String {
        crate::audit::to_hex(h)
    }

    fn unhex(s: &str) -> Hash {
        let v = crate::audit::record::from_hex(s).expect("hex");
        v.try_into().expect("32 bytes")
    }

    /// The eight leaf inputs of the RFC 6962 reference tree (certificate-transparency's
    /// merkle_tree_test, also Go's and transparency-dev's tests).
    fn rfc_leaves() -> Vec<Hash> {
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
            .iter()
            .map(|s| leaf_hash(&crate::audit::record::from_hex(s).expect("hex")))
            .collect()
    }

    const RFC_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn rfc6962_reference_roots_from_every_way_of_building_the_tree() {
        let leaves = rfc_leaves();
        assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest(b"")));
        let mut compact = CompactTree::new();
        let mut memory = MemoryTree::new();
        for n in 0..=8usize {
            if n > 0 {
                compact.push(leaves[n - 1]);
                memory.push(leaves[n - 1]);
            }
            assert_eq!(hex(&compact.root()), RFC_ROOTS[n], "compact tree of {n}");
            assert_eq!(hex(&memory.root()), RFC_ROOTS[n], "memory tree of {n}");
            assert_eq!(hex(&root(&leaves[..], n as u64).unwrap()), RFC_ROOTS[n], "root of slice {n}");
            assert_eq!(compact.peaks().len(), (n as u64).count_ones() as usize, "O(log n) state");
        }
    }

    #[test]
    fn rfc6962_reference_inclusion_paths() {
        let leaves = rfc_leaves();
        let cases: [(u64, u64, &[&str]); 4] = [
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        ];
        for (i, n, want) in cases {
            let got: Vec<String> = inclusion_proof(&leaves[..], i, n).unwrap().iter().map(hex).collect();
            assert_eq!(got, want, "path of leaf {i} in {n}");
            let proof: Vec<Hash> = want.iter().map(|s| unhex(s)).collect();
            verify_inclusion(&leaves[i as usize], i, n, &proof, &unhex(RFC_ROOTS[n as usize])).unwrap();
        }
    }

    #[test]
    fn rfc6962_reference_consistency_proofs() {
        let leaves = rfc_leaves();
        let cases: [(u64, u64, &[&str]); 3] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (m, n, want) in cases {
            let got: Vec<String> = consistency_proof(&leaves[..], m, n).unwrap().iter().map(hex).collect();
            assert_eq!(got, want, "consistency {m} → {n}");
            let proof: Vec<Hash> = want.iter().map(|s| unhex(s)).collect();
            verify_consistency(m, n, &unhex(RFC_ROOTS[m as usize]), &unhex(RFC_ROOTS[n as usize]), &proof)
                .unwrap();
        }
    }

    fn leaves(n: u64, salt: u8) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&[&i.to_le_bytes()[..], &[salt]].concat())).collect()
    }

    fn flip(h: &mut Hash, bit: usize) {
        h[bit / 8 % 32] ^= 1 << (bit % 8);
    }

    #[test]
    fn memory_tree_answers_every_proof_like_the_leaves_do() {
        let ls = leaves(70, 0);
        let mut mt = MemoryTree::new();
        for l in &ls {
            mt.push(*l);
        }
        for n in 1..=70u64 {
            assert_eq!(root(&mt, n).unwrap(), root(&ls[..], n).unwrap(), "root of {n}");
            for i in 0..n {
                assert_eq!(inclusion_proof(&mt, i, n).unwrap(), inclusion_proof(&ls[..], i, n).unwrap());
            }
            for m in 0..=n {
                let want = consistency_proof(&ls[..], m, n).unwrap();
                assert_eq!(consistency_proof(&mt, m, n).unwrap(), want);
                let mut sp = StreamingProver::new(consistency_ranges(m, n).unwrap());
                ls.iter().for_each(|l| sp.push(*l));
                assert_eq!(sp.finish().unwrap(), want, "streaming consistency {m}→{n}");
            }
            for i in (0..n).step_by(7) {
                let mut sp = StreamingProver::new(inclusion_ranges(i, n).unwrap());
                ls[..n as usize].iter().for_each(|l| sp.push(*l));
                assert_eq!(
                    sp.finish().unwrap(),
                    inclusion_proof(&ls[..], i, n).unwrap(),
                    "streaming {i} in {n}"
                );
            }
        }
    }

    #[test]
    fn consistency_between_every_pair_of_sizes_up_to_64_verifies_and_a_fork_fails() {
        let ls = leaves(64, 0);
        let forked = leaves(64, 1);
        let roots: Vec<Hash> = (0..=64).map(|n| root(&ls[..], n).unwrap()).collect();
        for new in 0..=64u64 {
            for old in 0..=new {
                let proof = consistency_proof(&ls[..], old, new).unwrap();
                assert!(proof.len() <= 64 - new.leading_zeros() as usize + 1, "size of {old}→{new}");
                verify_consistency(old, new, &roots[old as usize], &roots[new as usize], &proof)
                    .unwrap_or_else(|e| panic!("{old}→{new}: {e}"));
                if old > 0 && old < new {
                    // The same sizes over a different history: the old root does not fit.
                    let other_old = root(&forked[..], old).unwrap();
                    assert!(verify_consistency(old, new, &other_old, &roots[new as usize], &proof).is_err());
                    // Every one-bit change of the proof fails.
                    for k in 0..proof.len() {
                        let mut bad = proof.clone();
                        flip(&mut bad[k], (old * 7 + new) as usize);
                        assert!(verify_consistency(
                            old,
                            new,
                            &roots[old as usize],
                            &roots[new as usize],
                            &bad
                        )
                        .is_err());
                    }
                    // A shorter or longer proof fails.
                    assert!(verify_consistency(
                        old,
                        new,
                        &roots[old as usize],
                        &roots[new as usize],
                        &proof[1..]
                    )
                    .is_err());
                    let mut long = proof.clone();
                    long.push(roots[new as usize]);
                    assert!(verify_consistency(old, new, &roots[old as usize], &roots[new as usize], &long)
                        .is_err());
                }
            }
        }
        assert_eq!(consistency_proof(&ls[..], 5, 4), Err(MerkleError::SizeOrder { old: 5, new: 4 }));
        assert!(verify_consistency(0, 5, &roots[1], &roots[5], &[]).is_err());
    }

    #[test]
    fn out_of_range_requests_are_errors_not_panics() {
        let ls = leaves(5, 0);
        assert_eq!(inclusion_proof(&ls[..], 5, 5), Err(MerkleError::OutOfRange { index: 5, size: 5 }));
        assert!(inclusion_proof(&ls[..], 0, 6).is_err());
        assert!(consistency_proof(&ls[..], 1, 6).is_err());
        assert!(verify_inclusion(&ls[0], 0, 0, &[], &EMPTY_ROOT).is_err());
        assert!(verify_inclusion(&ls[0], u64::MAX, u64::MAX, &[], &EMPTY_ROOT).is_err());
    }

    /// The issue's figure: every record of a 10⁵-record trail proves, in at most
    /// ⌈log₂ 10⁵⌉ = 17 hashes (544 bytes), and the proof with one bit changed fails.
    #[test]
    fn every_record_of_a_100k_trail_proves_and_every_proof_with_a_bit_flipped_fails() {
        const N: u64 = 100_000;
        let mut mt = MemoryTree::new();
        let mut compact = CompactTree::new();
        for i in 0..N {
            let line = format!("{{\"v\":1,\"seq\":{}}}", i + 1);
            mt.push_line(line.as_bytes());
            compact.push_line(line.as_bytes());
        }
        let root = compact.root();
        assert_eq!(mt.root(), root);
        let mut longest = 0;
        for i in 0..N {
            let leaf = mt.leaf(i).unwrap();
            let mut proof = inclusion_proof(&mt, i, N).unwrap();
            longest = longest.max(proof.len());
            assert_eq!(verify_inclusion(&leaf, i, N, &proof, &root), Ok(()), "record {i}");
            let k = (i as usize) % proof.len();
            flip(&mut proof[k], (i as usize * 31) % 256);
            assert!(verify_inclusion(&leaf, i, N, &proof, &root).is_err(), "record {i} with a bit flipped");
        }
        assert_eq!(longest, 17);
    }

    /// Consistency proofs between every pair of 100 checkpoints of a growing trail verify;
    /// the same pairs against a forked history fail.
    #[test]
    fn consistency_between_every_pair_of_100_checkpoints_verifies() {
        let mut mt = MemoryTree::new();
        let mut sizes = Vec::new();
        let mut roots = Vec::new();
        for c in 0..100u64 {
            // Uneven growth: 1 to 97 records between checkpoints.
            for _ in 0..(c * 37 % 97 + 1) {
                let n = LeafSource::len(&mt);
                mt.push_line(format!("r{n}").as_bytes());
            }
            sizes.push(LeafSource::len(&mt));
            roots.push(mt.root());
        }
        let mut fork = MemoryTree::new();
        for i in 0..*sizes.last().unwrap() {
            fork.push_line(format!("{}{i}", if i == sizes[0] / 2 { "x" } else { "r" }).as_bytes());
        }
        for a in 0..100 {
            for b in a..100 {
                let p = consistency_proof(&mt, sizes[a], sizes[b]).unwrap();
                assert_eq!(
                    verify_consistency(sizes[a], sizes[b], &roots[a], &roots[b], &p),
                    Ok(()),
                    "{a}→{b}"
                );
                let fork_root = root(&fork, sizes[b]).unwrap();
                assert!(verify_consistency(sizes[a], sizes[b], &roots[a], &fork_root, &p).is_err());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every inclusion proof of every leaf verifies, is at most ⌈log₂ n⌉ hashes, and any
        /// one-bit change (of the proof, the leaf, or the root), another index, or another
        /// size fails.
        #[test]
        fn every_inclusion_proof_verifies_and_every_bit_flip_fails(n in 1u64..200, salt: u8, bit in 0usize..256) {
            let ls = leaves(n, salt);
            let tree = CompactTree::from_leaves(&ls);
            let root = tree.root();
            let longer = CompactTree::from_leaves(ls.iter().chain(Some(&leaf_hash(b"one more")))).root();
            let mut mt = MemoryTree::new();
            for l in &ls {
                mt.push(*l);
            }
            let bound = if n == 1 { 0 } else { 64 - (n - 1).leading_zeros() as usize };
            for i in 0..n {
                let proof = inclusion_proof(&mt, i, n).unwrap();
                prop_assert!(proof.len() <= bound);
                prop_assert_eq!(verify_inclusion(&ls[i as usize], i, n, &proof, &root), Ok(()));
                for k in 0..proof.len() {
                    let mut bad = proof.clone();
                    flip(&mut bad[k], bit);
                    prop_assert!(verify_inclusion(&ls[i as usize], i, n, &bad, &root).is_err());
                }
                let mut leaf = ls[i as usize];
                flip(&mut leaf, bit);
                prop_assert!(verify_inclusion(&leaf, i, n, &proof, &root).is_err());
                let mut r = root;
                flip(&mut r, bit);
                prop_assert!(verify_inclusion(&ls[i as usize], i, n, &proof, &r).is_err());
                if n > 1 {
                    prop_assert!(verify_inclusion(&ls[i as usize], (i + 1) % n, n, &proof, &root).is_err());
                }
                // Not a proof for the tree one leaf longer.
                prop_assert!(verify_inclusion(&ls[i as usize], i, n + 1, &proof, &longer).is_err());
            }
        }
    }
}
