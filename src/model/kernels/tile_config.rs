//! The AMX tile configuration of the bf16 products ([`super::bf16`]): palette 1, all eight
//! tiles 16 rows of 64 bytes. Self-contained, so that `bench/peak.rs`, which builds without
//! the crate, measures the tiles as the products configure them.

/// The 64-byte operand of `ldtilecfg`.
#[repr(C, align(64))]
pub struct TileConfig(pub [u8; 64]);

/// Rows of every tile.
pub const TILE_ROWS: usize = 16;

/// Eight tiles of [`TILE_ROWS`] rows of 64 bytes (the bf16 products use tiles 0-3 for
/// results, 4-5 for the left operand, 6-7 for the right one).
pub const TILE_CONFIG: TileConfig = {
    let mut config = [0u8; 64];
    config[0] = 1;
    let mut tile = 0;
    while tile < 8 {
        config[16 + 2 * tile] = 64;
        config[48 + tile] = TILE_ROWS as u8;
        tile += 1;
    }
    TileConfig(config)
};
