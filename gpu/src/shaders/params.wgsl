// Shared by every tally kernel; the host prepends this file to each shader
// (WGSL has no includes). Must match `Params` in wgpu_backend.rs.

struct Params {
    mode: u32,
    n: u32,
    ballots: u32,
    weighted: u32,
}

const WG: u32 = 256u;


// A list item that ties with the item before it (same group of a weak
// order); must match TIED_WITH_PREVIOUS in input.rs.
const TIED: u32 = 0x80000000u;
