// Per-candidate scores for plurality (mode 0, optionally weighted), approval
// (mode 1) and Borda (mode 2), list items as weak orders (TIED flags). Each workgroup accumulates a private histogram
// in workgroup memory as 64-bit lo/hi pairs (the adder that wraps lo carries
// into hi, so the sum is exact) and writes it to its slice of `partials`; the
// host adds the slices. Slot n counts invalid ballots.

// Params and WG come from params.wgsl, prepended by the host.
const MAX_SLOTS: u32 = 1025u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> items: array<u32>;
@group(0) @binding(2) var<storage, read> weights: array<u32>;
@group(0) @binding(3) var<storage, read> offsets: array<u32>;
@group(0) @binding(4) var<storage, read_write> partials: array<u32>;

var<workgroup> lo: array<atomic<u32>, MAX_SLOTS>;
var<workgroup> hi: array<atomic<u32>, MAX_SLOTS>;

fn add(slot: u32, v: u32) {
    let old = atomicAdd(&lo[slot], v);
    if (old + v < old) {
        atomicAdd(&hi[slot], 1u);
    }
}

// One ballot's list, group by group (a group is an item without TIED and the
// TIED items after it). Approval: one point per member. Borda: one point per
// candidate ranked strictly below, n - (end of the group within the list).
fn count_list(b: u32) {
    let start = offsets[b];
    let end = offsets[b + 1u];
    var seen: array<u32, 32>;
    if (start < end && (items[start] & TIED) != 0u) {
        add(params.n, 1u);
        return;
    }
    var i = start;
    while (i < end) {
        var g = i + 1u;
        while (g < end && (items[g] & TIED) != 0u) {
            g++;
        }
        for (var j = i; j < g; j++) {
            let c = items[j] & ~TIED;
            if (c >= params.n || (seen[c >> 5u] & (1u << (c & 31u))) != 0u) {
                add(params.n, 1u);
                return;
            }
            seen[c >> 5u] |= 1u << (c & 31u);
        }
        var points = 1u;
        if (params.mode == 2u) {
            points = params.n - (g - start);
        }
        for (var j = i; j < g; j++) {
            add(items[j] & ~TIED, points);
        }
        i = g;
    }
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let slots = params.n + 1u;
    for (var s = lid; s < slots; s += WG) {
        atomicStore(&lo[s], 0u);
        atomicStore(&hi[s], 0u);
    }
    workgroupBarrier();
    let stride = groups.x * WG;
    for (var b = wid.x * WG + lid; b < params.ballots; b += stride) {
        if (params.mode == 0u) {
            let c = items[b];
            if (c >= params.n) {
                add(params.n, 1u);
            } else if (params.weighted == 1u) {
                add(c, weights[b]);
            } else {
                add(c, 1u);
            }
        } else {
            count_list(b);
        }
    }
    workgroupBarrier();
    let base = wid.x * slots * 2u;
    for (var s = lid; s < slots; s += WG) {
        partials[base + 2u * s] = atomicLoad(&lo[s]);
        partials[base + 2u * s + 1u] = atomicLoad(&hi[s]);
    }
}
