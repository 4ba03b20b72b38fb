//! Support for the property tests: a seeded generator and the run loop that prints the seed of
//! a failing case so it can be replayed.
//!
//! `LITECLUSTER_PROPERTY_CASES` sets the number of cases (CI runs the default),
//! `LITECLUSTER_PROPERTY_SEED` replays one run.

/// splitmix64: tiny, seedable, the same everywhere.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Bytes that are mostly printable, with quotes, separators and UTF-8 mixed in.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"abcXYZ019 ;,.()[]{}'\"`-/*\\\n\t:=?&%+$@#";
        let n = self.below(max as u64 + 1) as usize;
        (0..n)
            .map(|_| match self.below(10) {
                0 => self.next() as u8,
                1 => 0xC3,
                _ => *self.pick(ALPHABET),
            })
            .collect()
    }
}

/// Runs `case` for each seed of the run; a panic names the seed to replay.
pub fn run(name: &str, default_cases: u64, mut case: impl FnMut(&mut Gen)) {
    let cases = std::env::var("LITECLUSTER_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let fixed = std::env::var("LITECLUSTER_PROPERTY_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let base = fixed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let cases = if fixed.is_some() { 1 } else { cases };
    let started = std::time::Instant::now();
    for i in 0..cases {
        let seed = base.wrapping_add(i);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            case(&mut Gen::new(seed));
        }));
        if let Err(e) = result {
            eprintln!(
                "property {name} failed; replay with LITECLUSTER_PROPERTY_SEED={seed} cargo test -p litecluster-node {name}"
            );
            std::panic::resume_unwind(e);
        }
    }
    eprintln!(
        "property {name}: {cases} cases from seed {base} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
