"""`loraship review REPORT`: people rate a comparison's answers; their feedback becomes data.

report.py (reading a compare report), page.py (the HTML form), server.py (a loopback
http.server that saves feedback.jsonl beside the report). The record format and what it
becomes is data/feedback.py's.
"""
