//! `ferrobeam-udp-gso`: the raw UDP loopback baseline of `scripts/bench.sh`. A sender thread
//! sends datagrams of `--size` bytes in UDP GSO batches (`UDP_SEGMENT`, as many segments as fit
//! in one 64 KiB send, at most 64); a receiver thread reads them with UDP GRO; the receiver's
//! byte count over `--duration` is the goodput. No QUIC, no crypto: the ceiling a QUIC stack on
//! the same kernel path could reach. Both sockets go through `quinn-udp`, which sets the socket
//! options and control messages.
//!
//! Prints one JSON object: size, segments per send, Gbit/s received, process CPU seconds (both
//! threads, from /proc) and Gbit/s per busy core.

use std::io::IoSliceMut;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

/// Most segments the kernel takes in one GSO send (`UDP_MAX_SEGMENTS`).
const GSO_SEGMENTS_MAX: usize = 64;
/// Most bytes one UDP send may carry (IPv4: 65535 less IP and UDP headers).
const SEND_BYTES_MAX: usize = 65_507;
/// Receive buffers per recvmmsg, each one GRO batch.
const RECV_BATCH: usize = 8;
/// Socket buffers: several batches in flight without drops on loopback.
const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

#[derive(Parser, Debug)]
#[command(about = "Raw UDP loopback throughput with GSO and GRO")]
struct Args {
    /// UDP payload bytes per datagram (1452 or jumbo 8952, as the QUIC matrix).
    #[arg(long, default_value_t = 1452)]
    size: usize,
    /// Seconds to send for.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(1..=SEND_BYTES_MAX).contains(&args.size) {
        bail!("--size must be 1..={SEND_BYTES_MAX}");
    }
    if !(args.duration > 0.0 && args.duration <= 600.0) {
        bail!("--duration must be in (0, 600] seconds");
    }
    let receiver = UdpSocket::bind("127.0.0.1:0").context("binding the receiver")?;
    let sender = UdpSocket::bind("127.0.0.1:0").context("binding the sender")?;
    let target = receiver.local_addr()?;
    let receive_state = UdpSocketState::new((&receiver).into())?;
    let send_state = UdpSocketState::new((&sender).into())?;
    // Best effort: the kernel caps them at rmem_max / wmem_max.
    let _ = receive_state.set_recv_buffer_size((&receiver).into(), SOCKET_BUFFER_BYTES);
    let _ = send_state.set_send_buffer_size((&sender).into(), SOCKET_BUFFER_BYTES);
    receiver.set_read_timeout(Some(Duration::from_millis(100)))?;
    let segments = (SEND_BYTES_MAX / args.size)
        .clamp(1, GSO_SEGMENTS_MAX)
        .min(send_state.max_gso_segments());

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let receive_thread = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || receive(&receiver, &receive_state, &stop, &received))
    };
    let send_thread = {
        let stop = stop.clone();
        let batch = vec![0x5Au8; args.size * segments];
        std::thread::spawn(move || -> std::io::Result<()> {
            let transmit = Transmit {
                destination: target,
                ecn: None,
                contents: &batch,
                segment_size: (segments > 1).then_some(args.size),
                src_ip: None,
            };
            // Bounded by the stop flag the main thread sets after `duration`.
            while !stop.load(Ordering::Relaxed) {
                match send_state.send((&sender).into(), &transmit) {
                    Ok(()) => {}
                    // A full socket buffer: the receiver is behind; try again.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    };

    // Warm up, then measure bytes and CPU over the duration.
    std::thread::sleep(Duration::from_millis(200));
    let (bytes_before, cpu_before, start) = (
        received.load(Ordering::Relaxed),
        cpu_seconds(),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    let (bytes_after, cpu_after) = (received.load(Ordering::Relaxed), cpu_seconds());
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    send_thread
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    receive_thread
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;

    let gbps = (bytes_after - bytes_before) as f64 * 8.0 / elapsed / 1e9;
    let cpu = cpu_after.zip(cpu_before).map(|(a, b)| a - b);
    let busy = cpu.map(|c| c / elapsed);
    let report = serde_json::json!({
        "baseline": "udp-gso-gro",
        "size": args.size,
        "segments-per-send": segments,
        "seconds": elapsed,
        "gbps": gbps,
        "cpu-seconds": cpu,
        "busy-cores": busy,
        "gbps-per-busy-core": busy.filter(|b| *b > 0.0).map(|b| gbps / b),
    });
    println!("{report}");
    Ok(())
}

fn receive(
    socket: &UdpSocket,
    state: &UdpSocketState,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> std::io::Result<()> {
    let mut storage = vec![[0u8; 65_536]; RECV_BATCH];
    let mut meta = [RecvMeta::default(); RECV_BATCH];
    // Bounded by the stop flag; each read waits at most the socket's read timeout.
    while !stop.load(Ordering::Relaxed) {
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        match state.recv(socket.into(), &mut bufs, &mut meta) {
            Ok(count) => {
                let bytes: usize = meta[..count].iter().map(|m| m.len).sum();
                received.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// User + system CPU seconds of this process (both threads).
fn cpu_seconds() -> Option<f64> {
    ferrobeam::ingress::process_cpu_seconds()
}
