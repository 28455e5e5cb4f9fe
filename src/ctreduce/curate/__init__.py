"""Archive-wide curation: near-duplicate slices across volumes, and leakage between pre-training
and downstream evaluation data (issue 12), on the 64-bit dHash every manifest records."""
