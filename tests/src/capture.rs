//! Packet captures with tcpdump inside a test namespace, read back as pcap, so a test can
//! check what crossed a wire: a marker in plain text, or — with TLS — not.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::process::{Placement, Proc};

/// A running tcpdump writing every packet (whole: `-s 0`) to a pcap file as it sees it (`-U`,
/// `--immediate-mode`), so that stopping it loses nothing already on the wire.
pub struct Capture {
    proc: Proc,
    file: PathBuf,
    log: PathBuf,
    interface: String,
}

impl Capture {
    /// Starts tcpdump on `interface` of the namespace at `netns`, writing to `file`, with a
    /// pcap `filter` expression (empty for every packet). Returns once tcpdump listens.
    pub fn start(netns: &Path, interface: &str, file: &Path, filter: &str) -> anyhow::Result<Self> {
        let log = file.with_extension("tcpdump.log");
        let mut command = Command::new("tcpdump");
        Placement {
            netns,
            cgroup_procs: None,
        }
        .apply(&mut command)?;
        command
            .args(["-i", interface, "-n", "-s", "0", "-U", "--immediate-mode"])
            // Stay root: the file is in a directory of the test's (root's) own.
            .args(["-Z", "root", "-w"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).with_context(|| format!("create {}", log.display()))?);
        if !filter.is_empty() {
            command.arg(filter);
        }
        let proc = Proc::spawn(&format!("tcpdump on {interface}"), command)
            .context("tcpdump (scripts/install-prereqs.sh installs it)")?;
        let mut capture = Self {
            proc,
            file: file.to_owned(),
            log,
            interface: interface.to_owned(),
        };
        capture.wait_listening(Duration::from_secs(10))?;
        Ok(capture)
    }

    fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains("listening on") {
                return Ok(());
            }
            if !self.proc.is_running() {
                bail!(
                    "tcpdump on {} exited at start: {}",
                    self.interface,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "tcpdump on {} not listening after {timeout:?}: {}",
                    self.interface,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// tcpdump's own messages so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops tcpdump (SIGINT, as ^C; SIGKILL after 5 s) and reads what it wrote.
    pub fn stop(mut self) -> anyhow::Result<Captured> {
        // A short pause: packets the kernel has queued for tcpdump get written first.
        std::thread::sleep(Duration::from_millis(200));
        if self.proc.signal(libc::SIGINT).is_ok()
            && self.proc.wait_timeout(Duration::from_secs(5))?.is_none()
        {
            self.proc.stop(Duration::from_millis(100));
        }
        let bytes =
            fs::read(&self.file).with_context(|| format!("reading {}", self.file.display()))?;
        let mut captured = Captured::parse(&bytes)
            .with_context(|| format!("{} (tcpdump: {})", self.file.display(), self.log()))?;
        captured.tcpdump_log = self.log();
        Ok(captured)
    }
}

/// The packets of a pcap file.
#[derive(Clone, Debug, Default)]
pub struct Captured {
    /// Each packet's bytes as captured (the whole frame: the capture used `-s 0`).
    pub packets: Vec<Vec<u8>>,
    /// The sum of the packets' lengths on the wire.
    pub wire_bytes: u64,
    /// tcpdump's messages, ending with its "N packets captured" summary.
    pub tcpdump_log: String,
}

impl Captured {
    /// Parses a pcap file (either byte order, micro- or nanosecond timestamps). A record cut
    /// short at the end (tcpdump killed mid-write) is left out.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        const MAGIC_US: u32 = 0xa1b2_c3d4;
        const MAGIC_NS: u32 = 0xa1b2_3c4d;
        let magic: [u8; 4] = bytes
            .get(..4)
            .context("not a pcap file: shorter than its header")?
            .try_into()?;
        let little = match (u32::from_le_bytes(magic), u32::from_be_bytes(magic)) {
            (MAGIC_US | MAGIC_NS, _) => true,
            (_, MAGIC_US | MAGIC_NS) => false,
            _ => bail!("not a pcap file: magic {magic:02x?}"),
        };
        let u32_at = |at: usize| -> Option<u32> {
            let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            Some(if little {
                u32::from_le_bytes(word)
            } else {
                u32::from_be_bytes(word)
            })
        };
        if bytes.len() < 24 {
            bail!("not a pcap file: shorter than its header");
        }
        let mut captured = Self::default();
        let mut at = 24;
        while let (Some(included), Some(original)) = (u32_at(at + 8), u32_at(at + 12)) {
            let start = at + 16;
            let Some(data) = bytes.get(start..start + included as usize) else {
                break;
            };
            captured.packets.push(data.to_vec());
            captured.wire_bytes += u64::from(original);
            at = start + included as usize;
        }
        Ok(captured)
    }

    pub fn packet_count(&self) -> usize {
        self.packets.len()
    }

    /// Whether any packet holds `needle` (a marker short enough to fit in one segment).
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.packets_containing(needle) > 0
    }

    /// How many packets hold `needle`.
    pub fn packets_containing(&self, needle: &[u8]) -> usize {
        self.packets_with(needle).count()
    }

    /// The packets holding `needle`.
    pub fn packets_with<'a>(&'a self, needle: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.packets
            .iter()
            .map(Vec::as_slice)
            .filter(move |packet| {
                needle.is_empty() || packet.windows(needle.len()).any(|w| w == needle)
            })
    }

    /// The distinct (source, destination) of the TCP/IPv4 packets, in order of first sight.
    pub fn tcp_flows(&self) -> Vec<(SocketAddrV4, SocketAddrV4)> {
        let mut flows = Vec::new();
        for flow in self.packets.iter().filter_map(|p| tcp_endpoints(p)) {
            if !flows.contains(&flow) {
                flows.push(flow);
            }
        }
        flows
    }

    /// A one-line description for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "{} packets, {} bytes on the wire; tcpdump: {}",
            self.packets.len(),
            self.wire_bytes,
            self.tcpdump_log.trim().replace('\n', "; ")
        )
    }
}

/// The source and destination of an Ethernet frame carrying TCP over IPv4.
pub fn tcp_endpoints(frame: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4)> {
    const ETHERNET: usize = 14;
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(ETHERNET..)?;
    if ip.first()? >> 4 != 4 || *ip.get(9)? != 6 {
        return None;
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    let tcp = ip.get(header..header + 4)?;
    let addr = |at: usize| -> Option<Ipv4Addr> {
        let octets: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(octets))
    };
    let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    Some((
        SocketAddrV4::new(addr(12)?, port(0)),
        SocketAddrV4::new(addr(16)?, port(2)),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A pcap file (microsecond, Ethernet) with `packets`, each given (captured, wire length).
    fn pcap(little: bool, packets: &[(&[u8], u32)]) -> Vec<u8> {
        let word = |v: u32| {
            if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend(word(0xa1b2_c3d4));
        out.extend(if little { [2, 0, 4, 0] } else { [0, 2, 0, 4] });
        out.extend([0; 8]);
        out.extend(word(262_144));
        out.extend(word(1));
        for (data, original) in packets {
            out.extend(word(1));
            out.extend(word(2));
            out.extend(word(data.len() as u32));
            out.extend(word(*original));
            out.extend(*data);
        }
        out
    }

    #[test]
    fn reads_packets_in_both_byte_orders() {
        for little in [true, false] {
            let file = pcap(little, &[(b"..POST / marker-123..", 80), (b"other", 60)]);
            let captured = Captured::parse(&file).unwrap();
            assert_eq!(captured.packet_count(), 2);
            assert_eq!(captured.wire_bytes, 140);
            assert!(captured.contains(b"marker-123"));
            assert_eq!(captured.packets_containing(b"marker-123"), 1);
            assert!(!captured.contains(b"marker-124"));
        }
    }

    #[test]
    fn reads_tcp_endpoints_of_ethernet_frames() {
        let mut frame = vec![0u8; 12];
        frame.extend([0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0];
        ip.extend([10, 77, 1, 1, 10, 77, 2, 10]);
        frame.extend(&ip);
        frame.extend(40000u16.to_be_bytes());
        frame.extend(8080u16.to_be_bytes());
        frame.extend([0u8; 16]);
        let expected = (
            "10.77.1.1:40000".parse().unwrap(),
            "10.77.2.10:8080".parse().unwrap(),
        );
        assert_eq!(tcp_endpoints(&frame), Some(expected));
        let captured = Captured {
            packets: vec![frame.clone(), frame.clone(), b"short".to_vec()],
            ..Default::default()
        };
        assert_eq!(captured.tcp_flows(), [expected]);
        // UDP, and ARP, are not TCP.
        let mut udp = frame.clone();
        udp[14 + 9] = 17;
        assert_eq!(tcp_endpoints(&udp), None);
        let mut arp = frame;
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(tcp_endpoints(&arp), None);
    }

    #[test]
    fn a_record_cut_short_is_left_out_and_garbage_is_refused() {
        let mut file = pcap(true, &[(b"whole", 5), (b"cut short", 9)]);
        file.truncate(file.len() - 3);
        let captured = Captured::parse(&file).unwrap();
        assert_eq!(captured.packet_count(), 1);
        assert_eq!(captured.wire_bytes, 5);
        // Only a header: an empty capture, not an error.
        assert_eq!(Captured::parse(&pcap(true, &[])).unwrap().packet_count(), 0);
        assert!(Captured::parse(b"GET / HTTP/1.1\r\n\r\n....").is_err());
        assert!(Captured::parse(b"").is_err());
    }
}
