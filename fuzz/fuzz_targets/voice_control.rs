//! What a voice peer or a relay reads from a stranger before trusting it:
//! the control stream's framed messages (requests, answers, updates) and
//! the presence signals gossiped on a room's voice topic. Nothing may
//! panic; a presence that verifies must name the node that sent it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tincan_core::RoomId;
use tincan_media::control::{Answer, Request, Update, read_message};
use tincan_media::presence::Presence;

static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    });
    runtime.block_on(async {
        let _ = read_message::<Request, _>(&mut &data[..], 64 * 1024).await;
        let _ = read_message::<Answer, _>(&mut &data[..], 64 * 1024).await;
        let _ = read_message::<Update, _>(&mut &data[..], 1024).await;
    });
    if let Ok(p) = Presence::verify(data, RoomId([0; 16]), "12D3KooWAny") {
        assert_eq!(p.binding.node.peer_id(), "12D3KooWAny");
    }
});
