//! A tiny thread-local wyrand generator for weighted draws. Not for anything secret:
//! it only spreads load, and it is a few times cheaper than a CSPRNG on the hot path.

use std::cell::Cell;

thread_local! {
    // Const-initialised (no lazy-init check per access); seeded on first use.
    static STATE: Cell<u64> = const { Cell::new(0) };
}

#[inline]
fn next() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = seed();
        }
        let x = x.wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// The first draw on a thread: out of line, so the per-draw path stays a few
/// instructions that inline into the caller whatever else the crate's code does.
#[cold]
#[inline(never)]
fn seed() -> u64 {
    rand::random::<u64>() | 1
}

/// A uniform draw in `0..n` (`n > 0`), by Lemire's multiply-shift (bias below 2^-32 for
/// the weights used here).
#[inline]
pub(crate) fn below(n: u64) -> u64 {
    ((u128::from(next()) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_stay_in_range_and_cover_it() {
        let mut seen = [0u32; 7];
        for _ in 0..70_000 {
            let v = super::below(7);
            assert!(v < 7);
            seen[v as usize] += 1;
        }
        assert!(
            seen.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{seen:?}"
        );
    }
}
