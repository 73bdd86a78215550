//! Installing a service's package when it is missing, with whatever package
//! manager the host has. Never upgrades: an installed package, whatever its
//! version, is left alone (upgrades are the host's business).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::host::process;

/// The package managers provision knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    /// Debian and derivatives.
    Apt,
    /// Fedora, RHEL and derivatives.
    Dnf,
    /// openSUSE and SLES.
    Zypper,
    /// Arch Linux.
    Pacman,
    /// Alpine Linux.
    Apk,
}

impl Manager {
    /// Picks the manager from `/etc/os-release` (ID, then ID_LIKE), falling
    /// back to whichever known tool exists.
    pub fn detect() -> Result<Manager> {
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let ids = os_ids(&os);
        let by_id = ids.iter().find_map(|id| Manager::for_os(id));
        let found = by_id
            .filter(|m| m.available())
            .or_else(|| Manager::ALL.into_iter().find(|m| m.available()));
        match found {
            Some(m) => Ok(m),
            None => bail!(
                "no supported package manager found (looked for apt-get, dnf, zypper, pacman, apk)"
            ),
        }
    }

    const ALL: [Manager; 5] = [
        Manager::Apt,
        Manager::Dnf,
        Manager::Zypper,
        Manager::Pacman,
        Manager::Apk,
    ];

    fn for_os(id: &str) -> Option<Manager> {
        Some(match id {
            "debian" | "ubuntu" | "raspbian" | "linuxmint" => Manager::Apt,
            "fedora" | "rhel" | "centos" | "rocky" | "almalinux" => Manager::Dnf,
            "opensuse" | "suse" | "sles" | "opensuse-leap" | "opensuse-tumbleweed" => {
                Manager::Zypper
            }
            "arch" | "manjaro" => Manager::Pacman,
            "alpine" => Manager::Apk,
            _ => return None,
        })
    }

    fn tool(self) -> &'static str {
        match self {
            Manager::Apt => "apt-get",
            Manager::Dnf => "dnf",
            Manager::Zypper => "zypper",
            Manager::Pacman => "pacman",
            Manager::Apk => "apk",
        }
    }

    fn available(self) -> bool {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(self.tool()).exists())
    }

    /// Whether `pkg` is installed.
    pub fn is_installed(self, pkg: &str) -> Result<bool> {
        match self {
            Manager::Apt => {
                let out = Command::new("dpkg-query")
                    .args(["-W", "-f=${Status}", "--", pkg])
                    .output();
                Ok(out.is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout).contains("install ok installed")
                }))
            }
            Manager::Dnf | Manager::Zypper => {
                process::succeeds(Command::new("rpm").args(["-q", "--", pkg]))
            }
            Manager::Pacman => process::succeeds(Command::new("pacman").args(["-Q", "--", pkg])),
            Manager::Apk => process::succeeds(Command::new("apk").args(["info", "-e", "--", pkg])),
        }
    }

    /// Installs `pkg` non-interactively.
    pub fn install(self, pkg: &str) -> Result<()> {
        let mut c = Command::new(self.tool());
        match self {
            Manager::Apt => {
                c.env("DEBIAN_FRONTEND", "noninteractive").args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "-o",
                    "Dpkg::Options::=--force-confold",
                    "--",
                    pkg,
                ]);
            }
            Manager::Dnf => {
                c.args(["install", "-y", "--", pkg]);
            }
            Manager::Zypper => {
                c.args(["--non-interactive", "install", "--", pkg]);
            }
            Manager::Pacman => {
                c.args(["-S", "--noconfirm", "--needed", "--", pkg]);
            }
            Manager::Apk => {
                c.args(["add", "--", pkg]);
            }
        }
        process::run(&mut c).map(|_| ())
    }
}

/// Installs `pkg` if it is missing; true when it was installed now.
pub fn ensure(pkg: &str) -> Result<bool> {
    let m = Manager::detect()?;
    if m.is_installed(pkg)? {
        return Ok(false);
    }
    m.install(pkg)
        .map_err(|e| e.context(format!("installing package {pkg:?} with {}", m.tool())))?;
    if !m.is_installed(pkg)? {
        bail!(
            "package {pkg:?} is still not installed after {} install",
            m.tool()
        );
    }
    Ok(true)
}

/// `ID` and `ID_LIKE` values of an os-release file, most specific first.
fn os_ids(os_release: &str) -> Vec<String> {
    let value = |key: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    let mut ids: Vec<String> = value("ID").into_iter().collect();
    ids.extend(
        value("ID_LIKE")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string),
    );
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_ids_map_to_managers() {
        let ids = os_ids("NAME=\"Rocky\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n");
        assert_eq!(ids, ["rocky", "rhel", "centos", "fedora"]);
        assert_eq!(Manager::for_os("rocky"), Some(Manager::Dnf));
        assert_eq!(
            os_ids("ID=ubuntu\nID_LIKE=debian\n")
                .iter()
                .find_map(|i| Manager::for_os(i)),
            Some(Manager::Apt)
        );
        assert_eq!(Manager::for_os("plan9"), None);
    }

    #[test]
    fn this_debian_host_uses_apt_and_sees_installed_packages() {
        let m = Manager::detect().expect("a package manager");
        assert_eq!(m, Manager::Apt);
        assert!(m.is_installed("dpkg").expect("query"));
        assert!(!m.is_installed("no-such-package-xyz").expect("query"));
    }
}
