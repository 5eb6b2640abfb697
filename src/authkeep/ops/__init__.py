"""Operations on the database and the deployment (SPEC §8): least-privilege roles, the guarded
truncate, backups and the production checklist. Library functions first; the CLI modules only
wrap them.
"""
