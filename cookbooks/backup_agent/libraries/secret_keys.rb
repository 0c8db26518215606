#
# Cookbook:: backup_agent
# Library:: secret_keys
#
# The one list of what only the secret store (the encrypted data bag item, or what a wrapper put
# in node.run_state) sets. Secrets (loading and checking), Validation (refusing them as
# attributes) and ConfigBuilder (rendering them) all read it: a key added here is accepted,
# refused and rendered at once. They used to keep lists of their own, and `secret_env` was
# rendered from the item but accepted as a plain node attribute too.

module BackupAgentCookbook
  module SecretKeys
    # Top-level keys of the item that become storage.* keys of the config, under the same names.
    STORAGE = %w(bucket region endpoint_url access_key_id secret_access_key session_token kms_key_id
                 db_password encryption_key previous_encryption_keys).freeze
    # The storage keys whose value is a list of strings (every other one is a string).
    STORAGE_LISTS = %w(previous_encryption_keys).freeze
    # Client-side encryption keys (the agent's storage.encryption_key and the previous keys it
    # still reads with): the agent refuses shorter ones, so the converge does first.
    ENCRYPTION_KEYS = %w(encryption_key previous_encryption_keys).freeze
    MIN_ENCRYPTION_KEY_LENGTH = 32
    # The item keys whose config key has another name: db_password is the database destination's
    # (storage.type: postgresql) storage.password.
    STORAGE_CONFIG_KEY = { 'db_password' => 'password' }.freeze
    # bucket, unless the item is for a database destination (it has db_password instead).
    REQUIRED = %w(bucket).freeze
    # job_secrets: { JOB => { KEY => ... } }: each key of the item's job_secrets.<job> and the
    # job key of the config it becomes (env becomes secret_env: masked by the agent whatever the names).
    JOB_SECRETS = 'job_secrets'.freeze
    JOB = { 'password' => 'password', 'env' => 'secret_env' }.freeze
    # notify: { KEY => URL }: whoever has one of these URLs can report as the node.
    NOTIFY = 'notify'.freeze
    NOTIFY_KEYS = %w(healthchecks_url webhook_url).freeze
  end
end
