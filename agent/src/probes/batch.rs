//! Reading a whole per-CPU hash map or array in a few `BPF_MAP_LOOKUP_BATCH` calls (Linux 5.6+).
//!
//! aya's map iterator costs two `bpf(2)` calls per key (`GET_NEXT_KEY`, then the lookup), and
//! each of those also runs berth's own `sys_enter` probe: the profile of an idle agent with a
//! hundred containers had map iteration as most of its CPU (docs/benchmarks.md, "Agent at
//! rest"). One batch call returns up to [`CHUNK`] keys with every CPU's value. A kernel that
//! refuses the command (before 5.6: `EINVAL`) gets `Err`, and the caller iterates as before.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

/// Keys asked per call.
const CHUNK: u32 = 1024;
/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, per-CPU values) of the per-CPU hash map or array `map` (an array's keys are its
/// `u32` indexes), `cpus` values each (the possible CPUs, as the kernel lays them out, each
/// rounded up to 8 bytes).
pub fn per_cpu_entries<K: Pod, V: Pod>(map: &MapData, cpus: usize) -> io::Result<Vec<(K, Vec<V>)>> {
    let stride = size_of::<V>().next_multiple_of(8);
    let mut chunk = CHUNK as usize;
    let mut out = Vec::new();
    // The hash map's batch token is a bucket index (u32); 8 bytes leave room.
    let mut token = [0u64; 1];
    let mut next = [0u64; 1];
    let mut first = true;
    loop {
        let mut keys = vec![0u8; chunk * size_of::<K>()];
        let mut values = vec![0u8; chunk * cpus * stride];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: bpf(2) with a batch attr whose buffers hold `count` keys and values and
        // outlive the call; the kernel writes at most that much and sets `count`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket holds more keys than asked for: ask for more, from the same place.
            Some(libc::ENOSPC) if attr.count == 0 => {
                chunk *= 2;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(err.unwrap_or_else(io::Error::last_os_error)),
        }
        for i in 0..attr.count as usize {
            // SAFETY: K and V are Pod (any bytes are a value); reads stay in the buffers.
            let key: K = unsafe {
                keys.as_ptr()
                    .add(i * size_of::<K>())
                    .cast::<K>()
                    .read_unaligned()
            };
            let per_cpu = (0..cpus)
                .map(|c| unsafe {
                    values
                        .as_ptr()
                        .add((i * cpus + c) * stride)
                        .cast::<V>()
                        .read_unaligned()
                })
                .collect();
            out.push((key, per_cpu));
        }
        if err.is_some() {
            // ENOENT: the last keys came with it.
            return Ok(out);
        }
        token = next;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use aya::maps::{IterableMap as _, PerCpuArray, PerCpuHashMap, PerCpuValues};
    use berth_common::SyscallKey;

    use super::*;

    /// Needs root (bpf(2) map creation); the test suite runs as root.
    #[test]
    fn batches_return_every_key_and_cpu_value_the_iterator_does() {
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        // More keys than one chunk, so the batch token is followed.
        let mut map = PerCpuHashMap::<MapData, SyscallKey, u64>::create(4096, 0)
            .expect("creating a per-CPU hash map (root and bpf(2) needed)");
        for i in 0..3000u32 {
            let key = SyscallKey {
                cgroup_id: u64::from(i / 10),
                nr: i % 10,
                _pad: 0,
            };
            let values: Vec<u64> = (0..cpus).map(|c| u64::from(i) * 100 + c as u64).collect();
            map.insert(key, PerCpuValues::try_from(values).unwrap(), 0)
                .unwrap();
        }
        let mut batched: Vec<(u64, u32, Vec<u64>)> =
            per_cpu_entries::<SyscallKey, u64>(map.map(), cpus)
                .expect("BPF_MAP_LOOKUP_BATCH")
                .into_iter()
                .map(|(k, v)| (k.cgroup_id, k.nr, v))
                .collect();
        let mut iterated: Vec<(u64, u32, Vec<u64>)> = map
            .iter()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.cgroup_id, k.nr, v.to_vec())
            })
            .collect();
        batched.sort();
        iterated.sort();
        assert_eq!(batched.len(), 3000);
        assert_eq!(batched, iterated);
        assert_eq!(batched[0].2, (0..cpus as u64).collect::<Vec<_>>());
    }

    #[test]
    fn an_arrays_batch_returns_every_index_with_its_cpu_values() {
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        let mut map = PerCpuArray::<MapData, [u64; 2]>::create(42, 0)
            .expect("creating a per-CPU array (root and bpf(2) needed)");
        for i in 0..42u32 {
            let values: Vec<[u64; 2]> = (0..cpus)
                .map(|c| [u64::from(i), u64::from(i) * 10 + c as u64])
                .collect();
            map.set(i, PerCpuValues::try_from(values).unwrap(), 0)
                .unwrap();
        }
        let all = per_cpu_entries::<u32, [u64; 2]>(map.map(), cpus).expect("BPF_MAP_LOOKUP_BATCH");
        assert_eq!(all.len(), 42);
        for (i, values) in &all {
            assert_eq!(values, &map.get(i, 0).unwrap().to_vec(), "index {i}");
        }
        assert_eq!(
            all.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..42).collect::<Vec<_>>()
        );
    }
}
