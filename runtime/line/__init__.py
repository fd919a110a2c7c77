"""The service that runs on the line: cameras, the inspection loop, commands, changeover, publishing, status.

It runs the pipeline on every frame and hands every result to the publisher and the sinks. Never imports
`export` (torch is not on a line device) nor the tools.
"""
