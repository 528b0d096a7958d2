"""The archive job's pieces: listing and resume as Ray Data, the actor, the plan, video segments.

`jobs/anonymize.py` is the entry point; these modules keep each part under the module-size limit.
"""
