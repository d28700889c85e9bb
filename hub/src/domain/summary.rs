//! Phase summaries and the effective phase of a fleet-matrix cell.

use convoy_core::status::Phase;

use super::StatusRecord;

/// Counts by phase (the proto PhaseSummary in domain form).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseCounts {
    /// All cells.
    pub total: u32,
    /// Ready.
    pub ready: u32,
    /// Pending, Reconciling, Unknown (no status yet) or Ready at an older generation.
    pub progressing: u32,
    /// NotReady.
    pub not_ready: u32,
    /// Stalled.
    pub stalled: u32,
    /// Suspended.
    pub suspended: u32,
}

impl PhaseCounts {
    /// Count one cell.
    pub fn add(&mut self, phase: Phase) {
        self.total += 1;
        match phase {
            Phase::Ready => self.ready += 1,
            Phase::NotReady => self.not_ready += 1,
            Phase::Stalled => self.stalled += 1,
            Phase::Suspended => self.suspended += 1,
            Phase::Unknown | Phase::Pending | Phase::Reconciling => self.progressing += 1,
        }
    }
}

/// The phase of a cell given what the hub wants (`desired_generation`, 0 when
/// the hub has no generation yet) and the agent's last status. A status that
/// says Ready for an older generation is still progressing: the cluster has
/// not caught up.
pub fn effective_phase(desired_generation: u64, status: Option<&StatusRecord>) -> Phase {
    match status {
        None => Phase::Unknown,
        Some(s)
            if s.status.phase == Phase::Ready
                && desired_generation > 0
                && s.status.generation != desired_generation =>
        {
            Phase::Reconciling
        }
        Some(s) => s.status.phase,
    }
}

#[cfg(test)]
mod tests {
    use convoy_core::status::BundleStatus;

    use super::*;

    #[test]
    fn counts_and_effective_phase() {
        let ready = StatusRecord {
            status: BundleStatus { generation: 2, phase: Phase::Ready, ..Default::default() },
            ..Default::default()
        };
        assert_eq!(effective_phase(2, Some(&ready)), Phase::Ready);
        assert_eq!(effective_phase(3, Some(&ready)), Phase::Reconciling);
        assert_eq!(effective_phase(3, None), Phase::Unknown);
        let stalled = StatusRecord {
            status: BundleStatus { generation: 2, phase: Phase::Stalled, ..Default::default() },
            ..Default::default()
        };
        assert_eq!(effective_phase(3, Some(&stalled)), Phase::Stalled);
        let mut c = PhaseCounts::default();
        for p in [Phase::Ready, Phase::Unknown, Phase::Stalled, Phase::Ready] {
            c.add(p);
        }
        assert_eq!(c, PhaseCounts { total: 4, ready: 2, progressing: 1, stalled: 1, ..Default::default() });
    }
}
