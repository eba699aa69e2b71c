"""Local stand-ins for every provider, on loopback: the same paths, request validation, answers,
error bodies and signed status webhooks as the real APIs (docs/providers.md), with configurable
throughput limits, latency, faults and delivery outcomes. What the demo, the tests and the
benchmarks send to; pointing a spec's base URL at the real provider needs no code change."""
