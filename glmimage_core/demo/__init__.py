"""Builders of tiny and real-size random models for tests, benchmarks and the demo. Product code never imports this room."""
