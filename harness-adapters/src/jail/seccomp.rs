//! The jail's system-call filter: a deny list, each entry with its reason.
//!
//! A harness runs arbitrary programs (its Bash tool runs whatever the model
//! writes), so an allow list of what `node`, `bash`, `python3`, `grep`… may
//! call would break apps in ways no one could predict. What is denied
//! instead is the kernel surface a jailed process has no business touching
//! and that escapes have used: changing mounts or namespaces, tracing other
//! processes, loading code into the kernel, the kernel keyring (not
//! namespaced), `io_uring` (its operations bypass this filter). Denied calls
//! fail with `EPERM`; `clone3` fails with `ENOSYS` so the C library falls
//! back to `clone`, whose flags this filter can read.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Denied outright, and why.
const DENIED: &[(i64, &str)] = &[
    (libc::SYS_mount, "the jail's mounts are final"),
    (
        libc::SYS_umount2,
        "unmounting could reveal what a mount hides",
    ),
    (libc::SYS_pivot_root, "the jail's root is final"),
    (libc::SYS_chroot, "the jail's root is final"),
    (
        libc::SYS_move_mount,
        "new mount API: the jail's mounts are final",
    ),
    (libc::SYS_open_tree, "new mount API: could clone a mount"),
    (libc::SYS_fsopen, "new mount API"),
    (libc::SYS_fsconfig, "new mount API"),
    (libc::SYS_fsmount, "new mount API"),
    (libc::SYS_fspick, "new mount API"),
    (
        libc::SYS_mount_setattr,
        "new mount API: could make a bind writable",
    ),
    (
        libc::SYS_unshare,
        "no new namespaces: a nested user namespace is the classic bridge to privilege",
    ),
    (libc::SYS_setns, "no joining other namespaces"),
    (libc::SYS_ptrace, "no tracing or steering another process"),
    (
        libc::SYS_process_vm_readv,
        "no reading another process's memory",
    ),
    (
        libc::SYS_process_vm_writev,
        "no writing another process's memory",
    ),
    (libc::SYS_kexec_load, "no replacing the kernel"),
    (libc::SYS_kexec_file_load, "no replacing the kernel"),
    (libc::SYS_reboot, "the host's, not the jail's"),
    (libc::SYS_init_module, "no kernel modules"),
    (libc::SYS_finit_module, "no kernel modules"),
    (libc::SYS_delete_module, "no kernel modules"),
    (
        libc::SYS_bpf,
        "eBPF is kernel attack surface and can observe the host",
    ),
    (
        libc::SYS_perf_event_open,
        "can observe the host; kernel attack surface",
    ),
    (libc::SYS_keyctl, "the kernel keyring is not namespaced"),
    (libc::SYS_add_key, "the kernel keyring is not namespaced"),
    (
        libc::SYS_request_key,
        "the kernel keyring is not namespaced",
    ),
    (libc::SYS_userfaultfd, "a classic exploitation primitive"),
    (
        libc::SYS_open_by_handle_at,
        "opens files by handle, past bind mounts (the 'shocker' escape)",
    ),
    (libc::SYS_name_to_handle_at, "pairs with open_by_handle_at"),
    (
        libc::SYS_io_uring_setup,
        "io_uring operations bypass seccomp",
    ),
    (
        libc::SYS_io_uring_enter,
        "io_uring operations bypass seccomp",
    ),
    (
        libc::SYS_io_uring_register,
        "io_uring operations bypass seccomp",
    ),
    (libc::SYS_swapon, "host administration"),
    (libc::SYS_swapoff, "host administration"),
    (libc::SYS_acct, "host administration"),
    (libc::SYS_quotactl, "host administration"),
    (libc::SYS_syslog, "reads the host's kernel log"),
    (libc::SYS_settimeofday, "the clock is the host's"),
    (libc::SYS_clock_settime, "the clock is the host's"),
    (libc::SYS_clock_adjtime, "the clock is the host's"),
    (libc::SYS_adjtimex, "the clock is the host's"),
    (libc::SYS_iopl, "raw I/O port access"),
    (libc::SYS_ioperm, "raw I/O port access"),
    (libc::SYS_vhangup, "terminal administration"),
    (libc::SYS_lookup_dcookie, "kernel profiling"),
];

/// `clone` flags that create namespaces: denied for the same reason as
/// `unshare`.
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

/// `personality` values allowed: Linux itself, and the query.
const PERSONALITY_LINUX: u64 = 0;
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

/// The number of denied system calls (for `karta doctor`).
pub fn denied_count() -> usize {
    DENIED.len() + 3
}

/// The filters, in the order to install them.
pub(crate) fn filters() -> Result<Vec<BpfProgram>, seccompiler::Error> {
    let arch = target_arch();
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(call, _)| (*call, Vec::new())).collect();
    rules.insert(
        libc::SYS_clone,
        NAMESPACE_FLAGS
            .iter()
            .map(|flag| {
                SeccompRule::new(vec![SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(*flag),
                    *flag,
                )?])
            })
            .collect::<Result<_, _>>()?,
    );
    // Execution domains change how the kernel reads a program (e.g.
    // READ_IMPLIES_EXEC): only plain Linux, and asking which is set.
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(vec![
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                PERSONALITY_LINUX,
            )?,
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                PERSONALITY_QUERY,
            )?,
        ])?],
    );
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(vec![deny.try_into()?, clone3.try_into()?])
}

fn target_arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
    #[cfg(target_arch = "riscv64")]
    {
        TargetArch::riscv64
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "riscv64")))]
    {
        TargetArch::x86_64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filters_compile() {
        let filters = super::filters().expect("filters");
        assert_eq!(filters.len(), 2);
        assert!(filters.iter().all(|f| !f.is_empty()));
    }
}
