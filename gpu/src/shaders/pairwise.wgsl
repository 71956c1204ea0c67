// Schulze's pairwise matrix for up to 64 candidates: a ranked candidate beats
// every candidate in a later group of its ballot's weak order and every
// unranked one, and nobody in its own group (TIED flags, see params.wgsl). Each workgroup
// counts into a private n*n matrix in workgroup memory (u32 is enough: one
// increment per ballot per cell) and writes it to its slice of `partials`
// after the leading invalid-ballot counter.

// Params and WG come from params.wgsl, prepended by the host.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> items: array<u32>;
@group(0) @binding(3) var<storage, read> offsets: array<u32>;
@group(0) @binding(4) var<storage, read_write> partials: array<atomic<u32>>;

var<workgroup> matrix: array<atomic<u32>, 4096>;

fn count_ranking(b: u32) {
    let n = params.n;
    let start = offsets[b];
    let end = offsets[b + 1u];
    var seen: array<u32, 2>;
    if (start < end && (items[start] & TIED) != 0u) {
        atomicAdd(&partials[0], 1u);
        return;
    }
    var i = start;
    while (i < end) {
        // The group [i, g): marked seen first, so its members do not beat
        // each other.
        var g = i + 1u;
        while (g < end && (items[g] & TIED) != 0u) {
            g++;
        }
        for (var j = i; j < g; j++) {
            let c = items[j] & ~TIED;
            if (c >= n || (seen[c >> 5u] & (1u << (c & 31u))) != 0u) {
                atomicAdd(&partials[0], 1u);
                return;
            }
            seen[c >> 5u] |= 1u << (c & 31u);
        }
        for (var j = i; j < g; j++) {
            let c = items[j] & ~TIED;
            for (var x = 0u; x < n; x++) {
                if ((seen[x >> 5u] & (1u << (x & 31u))) == 0u) {
                    atomicAdd(&matrix[c * n + x], 1u);
                }
            }
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
    let cells = params.n * params.n;
    for (var s = lid; s < cells; s += WG) {
        atomicStore(&matrix[s], 0u);
    }
    workgroupBarrier();
    let stride = groups.x * WG;
    for (var b = wid.x * WG + lid; b < params.ballots; b += stride) {
        count_ranking(b);
    }
    workgroupBarrier();
    let base = 1u + wid.x * cells;
    for (var s = lid; s < cells; s += WG) {
        atomicStore(&partials[base + s], atomicLoad(&matrix[s]));
    }
}
