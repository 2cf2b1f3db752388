//! The Merkle tree of a batch commitment: one signature over the root covers every message of
//! the batch, and each message carries its inclusion proof.
//!
//! The tree is RFC 9162's (Certificate Transparency v2, §2.1) with SHA-256: a leaf hashes
//! `0x00 ‖ unsigned id`, an inner node `0x01 ‖ left ‖ right`, and a tree of `n` leaves splits at
//! the largest power of two below `n`. The domain bytes keep a leaf from passing for an inner
//! node. Proofs and their check are the RFC's audit path (§2.1.3), so a verifier can use any
//! implementation of it.

use sha2::{Digest as _, Sha256};

use super::Id;

/// Most leaves one batch commitment covers (a proof has at most 16 hashes).
pub const BATCH_LEAVES_MAX: usize = 1 << BATCH_PATH_MAX;
/// Most hashes in one inclusion proof.
pub const BATCH_PATH_MAX: usize = 16;

/// RFC 9162's leaf hash of a message's unsigned id.
pub fn leaf_hash(unsigned_id: &Id) -> [u8; 32] {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(unsigned_id.0)
        .finalize()
        .into()
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// A whole tree, level by level: built once per batch, then every leaf's proof is read off it.
#[derive(Debug, Clone)]
pub struct Tree {
    /// `levels[0]` are the leaf hashes; each next level pairs the one below, and a lone last
    /// node moves up unchanged (which is exactly RFC 9162's split at a power of two).
    levels: Vec<Vec<[u8; 32]>>,
}

impl Tree {
    /// The tree over `leaves` (leaf hashes).
    ///
    /// # Panics
    /// When `leaves` is empty or longer than [`BATCH_LEAVES_MAX`]: the caller batches.
    pub fn new(leaves: Vec<[u8; 32]>) -> Self {
        assert!(
            (1..=BATCH_LEAVES_MAX).contains(&leaves.len()),
            "a batch commitment covers 1 to {BATCH_LEAVES_MAX} leaves"
        );
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let below = levels.last().expect("checked");
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node_hash(left, right),
                    [lone] => *lone,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    /// Leaves in the tree.
    pub fn size(&self) -> usize {
        self.levels[0].len()
    }

    /// The root hash (RFC 9162's MTH).
    pub fn root(&self) -> [u8; 32] {
        self.levels.last().expect("at least the leaves")[0]
    }

    /// The inclusion proof of leaf `index`: sibling hashes from the leaf up.
    ///
    /// # Panics
    /// When `index` is not a leaf.
    pub fn proof(&self, index: usize) -> Vec<[u8; 32]> {
        assert!(index < self.size(), "leaf {index} of {}", self.size());
        let mut path = Vec::with_capacity(self.levels.len());
        let mut at = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = at ^ 1;
            // A lone last node has no sibling at this level: it moves up as it is.
            if sibling < level.len() {
                path.push(level[sibling]);
            }
            at /= 2;
        }
        path
    }
}

/// How many hashes the proof of leaf `index` in a tree of `size` leaves has, or `None` when
/// `index` is not a leaf.
pub fn proof_len(index: u64, size: u64) -> Option<usize> {
    if index >= size {
        return None;
    }
    let (mut at, mut last, mut len) = (index, size - 1, 0);
    while last > 0 {
        if at ^ 1 <= last {
            len += 1;
        }
        at /= 2;
        last /= 2;
    }
    Some(len)
}

/// The root that `leaf` (a leaf hash) at `index` of a `size`-leaf tree proves with `path`
/// (RFC 9162 §2.1.3.2), or `None` when the path does not fit the position.
pub fn root_from_proof(
    leaf: [u8; 32],
    index: u64,
    size: u64,
    path: &[[u8; 32]],
) -> Option<[u8; 32]> {
    if index >= size {
        return None;
    }
    let (mut fnode, mut snode, mut r) = (index, size - 1, leaf);
    for p in path {
        if snode == 0 {
            return None;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9162's recursive definitions, written out independently of [`Tree`].
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            1 => leaves[0],
            n => {
                let k = split(n);
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn rfc_path(m: usize, leaves: &[[u8; 32]]) -> Vec<[u8; 32]> {
        let n = leaves.len();
        if n == 1 {
            return Vec::new();
        }
        let k = split(n);
        if m < k {
            let mut path = rfc_path(m, &leaves[..k]);
            path.push(mth(&leaves[k..]));
            path
        } else {
            let mut path = rfc_path(m - k, &leaves[k..]);
            path.push(mth(&leaves[..k]));
            path
        }
    }

    /// The largest power of two smaller than `n` (n ≥ 2).
    fn split(n: usize) -> usize {
        1 << (usize::BITS - 1 - (n - 1).leading_zeros())
    }

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                leaf_hash(&Id(id))
            })
            .collect()
    }

    #[test]
    fn tree_and_proofs_are_rfc_9162s_for_every_size_up_to_70() {
        for n in 1..=70 {
            let leaves = leaves(n);
            let tree = Tree::new(leaves.clone());
            assert_eq!(tree.root(), mth(&leaves), "root of {n}");
            for (m, leaf) in leaves.iter().enumerate() {
                let path = tree.proof(m);
                assert_eq!(path, rfc_path(m, &leaves), "path of {m} in {n}");
                assert_eq!(proof_len(m as u64, n as u64), Some(path.len()));
                assert_eq!(
                    root_from_proof(*leaf, m as u64, n as u64, &path),
                    Some(tree.root()),
                    "proof of {m} in {n}"
                );
            }
        }
    }

    #[test]
    fn a_proof_proves_nothing_else() {
        let leaves = leaves(13);
        let tree = Tree::new(leaves.clone());
        let root = tree.root();
        let path = tree.proof(6);
        let holds = |leaf, index, size, path: &[[u8; 32]]| {
            root_from_proof(leaf, index, size, path) == Some(root)
        };
        assert!(holds(leaves[6], 6, 13, &path));
        // Another leaf, position or size under the same path.
        assert!(!holds(leaves[7], 6, 13, &path));
        for index in (0..13).filter(|&i| i != 6) {
            assert!(!holds(leaves[6], index, 13, &path), "index {index}");
        }
        // The count is not fixed by the proof: in any tree of 9 to 16 leaves, leaf 6 lies in
        // the full left subtree of 8 and the right subtree is one hash, whatever its size. That
        // is why batch commitments sign the count.
        let sizes: Vec<u64> = (1..40).filter(|&s| holds(leaves[6], 6, s, &path)).collect();
        assert_eq!(sizes, (9..=16).collect::<Vec<u64>>());
        // A changed, shortened or lengthened path.
        let mut changed = path.clone();
        changed[1][0] ^= 1;
        assert!(!holds(leaves[6], 6, 13, &changed));
        assert!(!holds(leaves[6], 6, 13, &path[..path.len() - 1]));
        let mut longer = path.clone();
        longer.push([0; 32]);
        assert!(!holds(leaves[6], 6, 13, &longer));
        assert_eq!(root_from_proof(leaves[0], 13, 13, &[]), None);
        assert_eq!(proof_len(13, 13), None);
    }

    #[test]
    fn one_leaf_is_its_own_root() {
        let leaves = leaves(1);
        let tree = Tree::new(leaves.clone());
        assert_eq!(tree.root(), leaves[0]);
        assert!(tree.proof(0).is_empty());
        assert_eq!(root_from_proof(leaves[0], 0, 1, &[]), Some(leaves[0]));
    }
}
