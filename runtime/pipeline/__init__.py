"""The per-frame model path: numpy in, judgement out. No sockets, no threads of its own, no torch.

preprocess -> engines (encoder, decoder, prompt learner) -> maps -> LLM session (or the calibrated judge),
wired by inspector.py; products.py holds the packs a frame is judged against. Imported by the line service,
the tools and the export side's checks alike, so it imports none of them.
"""
