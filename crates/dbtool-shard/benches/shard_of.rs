//! `shard_of` must stay under 100 ns per call (issue 7).

use criterion::{criterion_group, criterion_main, Criterion};
use dbtool_shard::{Options, Router, Scheme, ShardMap};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let ids: Vec<String> = (0..1024)
        .map(|i| {
            uuid::Uuid::from_u128(
                0x6f1c_2a4e_9d7b_4c1e_8f3a_2b5d_7e9c_1a0f_u128.wrapping_mul(i + 1),
            )
            .to_string()
        })
        .collect();
    for scheme in [Scheme::Buckets, Scheme::Hex8Modulo] {
        let map = ShardMap::even_n(scheme, 16).unwrap();
        let router = Router::new(
            map,
            (0..16).map(|i| (format!("shard-{i}"), i)),
            Options::default(),
        )
        .unwrap();
        let mut i = 0usize;
        c.bench_function(&format!("router_shard_of_{scheme}"), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(router.shard_of(black_box(&ids[i])).unwrap())
            })
        });
        let routing = router.routing();
        c.bench_function(&format!("routing_snapshot_shard_of_{scheme}"), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(routing.shard_of(black_box(&ids[i])).unwrap())
            })
        });
    }
    let map = ShardMap::even_n(Scheme::Buckets, 4).unwrap();
    let router = Router::new(
        map,
        (0..4).map(|i| (format!("shard-{i}"), i)),
        Options::default(),
    )
    .unwrap();
    c.bench_function("router_team_with_counting", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(router.team(black_box(&ids[i])).unwrap())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
