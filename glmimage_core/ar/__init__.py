"""The AR stage: prompt, loading, generation (token sampling), seeded batches, compiled step, residency."""
