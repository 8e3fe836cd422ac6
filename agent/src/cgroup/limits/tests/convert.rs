//! runc's v1 -> v2 conversions, checked at the ends of their ranges and at docker's defaults.

use super::MIB;
use crate::cgroup::limits::{blkio_weight_to_io_weight, cpu_shares_to_weight, memory_swap_to_v2};

#[test]
fn v1_values_convert_to_v2_as_runc_converts_them() {
    assert_eq!(cpu_shares_to_weight(2), 1);
    assert_eq!(cpu_shares_to_weight(512), 20);
    assert_eq!(cpu_shares_to_weight(1024), 39);
    assert_eq!(cpu_shares_to_weight(262_144), 10_000);
    assert_eq!(blkio_weight_to_io_weight(10), 1);
    assert_eq!(blkio_weight_to_io_weight(500), 4950);
    assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
    assert_eq!(
        memory_swap_to_v2(128 * MIB as i64, 64 * MIB),
        64 * MIB as i64
    );
    assert_eq!(memory_swap_to_v2(64 * MIB as i64, 64 * MIB), 0);
    assert_eq!(memory_swap_to_v2(-1, 64 * MIB), -1);
}
