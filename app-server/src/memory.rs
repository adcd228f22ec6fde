//! Giving memory back to the system after a burst of connections closes.
//!
//! Thousands of connections leave the allocator's heaps full of free but
//! mapped pages when they close: glibc keeps them for reuse, so a server
//! that once held many connections would keep their memory forever. After
//! enough connections have closed, [`Trimmer`] asks the allocator to return
//! what is free (`malloc_trim`, on a blocking thread: it walks every
//! arena).

/// Decides when closed connections are worth a trim.
#[derive(Debug, Default)]
pub struct Trimmer {
    open: usize,
    peak: usize,
}

/// Fewest connections that must have closed since the peak before a trim.
const MIN_CLOSED_FOR_TRIM: usize = 256;

impl Trimmer {
    /// A connection opened.
    pub fn opened(&mut self) {
        self.open += 1;
        self.peak = self.peak.max(self.open);
    }

    /// A connection closed. Returns true when the memory of the connections
    /// closed since the last peak should be given back now: at least
    /// [`MIN_CLOSED_FOR_TRIM`] closed, and at most half the peak remain.
    pub fn closed(&mut self) -> bool {
        self.open = self.open.saturating_sub(1);
        let closed = self.peak - self.open;
        if closed >= MIN_CLOSED_FOR_TRIM && self.open <= self.peak / 2 {
            self.peak = self.open;
            return true;
        }
        false
    }
}

/// Returns the allocator's free memory to the system, off the async
/// workers.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only walks the allocator's own free lists;
        // it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_when_half_of_a_burst_has_closed() {
        let mut trimmer = Trimmer::default();
        for _ in 0..1_000 {
            trimmer.opened();
        }
        // Closing them all: a trim each time half of what was open has
        // closed, while at least 256 closed since the last one.
        let trims: Vec<usize> = (1..=1_000).filter(|_| trimmer.closed()).collect();
        assert_eq!(trims, vec![500, 756]);
        // A few connections coming and going never trigger a trim.
        for _ in 0..100 {
            trimmer.opened();
            assert!(!trimmer.closed());
        }
    }
}
