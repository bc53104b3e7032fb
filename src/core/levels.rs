//! Memory levels: where the tree (or one tool's child) stands against its
//! budget, with hysteresis so that a tree hovering at a threshold does not flap.

use serde::{Deserialize, Serialize};

use crate::config::MemoryConfig;

/// How far below a level's threshold the tree must fall to leave it.
pub const HYSTERESIS: f64 = 0.05;

/// How hard the memory policy is acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Normal = 0,
    Trim = 1,
    Degrade = 2,
    Restart = 3,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Trim => "trim",
            Level::Degrade => "degrade",
            Level::Restart => "restart",
        }
    }

    pub fn from_u8(n: u8) -> Level {
        match n {
            0 => Level::Normal,
            1 => Level::Trim,
            2 => Level::Degrade,
            _ => Level::Restart,
        }
    }

    fn below(self) -> Level {
        Level::from_u8((self as u8).saturating_sub(1))
    }
}

/// The thresholds of the levels, as fractions of a budget.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub trim: f64,
    pub degrade: f64,
    pub restart: f64,
}

impl Thresholds {
    pub fn of(m: &MemoryConfig) -> Self {
        Thresholds {
            trim: m.trim_at,
            degrade: m.degrade_at,
            restart: m.restart_at,
        }
    }

    fn enter_at(&self, level: Level) -> f64 {
        match level {
            Level::Normal => 0.0,
            Level::Trim => self.trim,
            Level::Degrade => self.degrade,
            Level::Restart => self.restart,
        }
    }

    /// The level after measuring `fraction` at level `current`: up at once to
    /// the highest threshold reached; down one level at a time, each only
    /// once the fraction is [`HYSTERESIS`] below the threshold of the level left.
    pub fn next(&self, current: Level, fraction: f64) -> Level {
        let reached = [Level::Restart, Level::Degrade, Level::Trim]
            .into_iter()
            .find(|&l| fraction >= self.enter_at(l))
            .unwrap_or(Level::Normal);
        if reached >= current {
            return reached;
        }
        let mut level = current;
        while level > reached && fraction < self.enter_at(level) - HYSTERESIS {
            level = level.below();
        }
        level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        trim: 0.70,
        degrade: 0.90,
        restart: 0.95,
    };

    #[test]
    fn levels_rise_at_once_to_the_highest_threshold_reached() {
        assert_eq!(T.next(Level::Normal, 0.69), Level::Normal);
        assert_eq!(T.next(Level::Normal, 0.70), Level::Trim);
        assert_eq!(T.next(Level::Normal, 0.91), Level::Degrade);
        assert_eq!(T.next(Level::Normal, 0.99), Level::Restart);
        assert_eq!(T.next(Level::Trim, 0.95), Level::Restart);
    }

    #[test]
    fn levels_fall_only_five_points_below_their_threshold() {
        // Restart is held until below 90 %.
        assert_eq!(T.next(Level::Restart, 0.94), Level::Restart);
        assert_eq!(T.next(Level::Restart, 0.9001), Level::Restart);
        assert_eq!(T.next(Level::Restart, 0.899), Level::Degrade);
        // Degrade is held until below 85 %, trim until below 65 %.
        assert_eq!(T.next(Level::Degrade, 0.86), Level::Degrade);
        assert_eq!(T.next(Level::Degrade, 0.84), Level::Trim);
        assert_eq!(T.next(Level::Trim, 0.66), Level::Trim);
        assert_eq!(T.next(Level::Trim, 0.64), Level::Normal);
        // A big drop passes every level it is far enough below.
        assert_eq!(T.next(Level::Restart, 0.30), Level::Normal);
        assert_eq!(T.next(Level::Restart, 0.80), Level::Trim);
    }

    #[test]
    fn a_fraction_hovering_at_a_threshold_does_not_flap() {
        let mut level = Level::Normal;
        let mut changes = 0;
        for i in 0..100 {
            let f = if i % 2 == 0 { 0.91 } else { 0.88 };
            let next = T.next(level, f);
            changes += usize::from(next != level);
            level = next;
        }
        assert_eq!((level, changes), (Level::Degrade, 1));
    }

    #[test]
    fn level_round_trips_through_its_number() {
        for l in [Level::Normal, Level::Trim, Level::Degrade, Level::Restart] {
            assert_eq!(Level::from_u8(l as u8), l);
        }
    }
}
