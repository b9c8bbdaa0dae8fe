"""The AR stage: prompt, loading, generation, residency, LoRAs."""
