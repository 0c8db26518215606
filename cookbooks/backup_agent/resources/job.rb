#
# Cookbook:: backup_agent
# Resource:: job
#
# One job of the agent, declared from a wrapper cookbook:
#
#   include_recipe 'backup_agent'
#   backup_agent_job 'pg' do
#     type 'command'
#     preset 'postgresql'
#     database 'app'
#     schedule 'daily at 01:00'
#   end
#
# Properties carry the config file's job keys under the same names (except `freeze_paths`, the
# config's `freeze`: Ruby reserves that name). The resource changes nothing by itself: :create
# adds the job to this run's list in node.run_state, :delete takes it out (an attribute job of
# the same name too), and backup_agent::config renders the one config.yaml from attributes plus
# that list at the end of the run. A job nobody declares any more is therefore gone from the
# next config. Secrets (a command job's password, secret environment variables) never go here:
# they come from the encrypted data bag item, job_secrets.<job>.password / .env.

unified_mode true
provides :backup_agent_job

description 'A backup-agent job (files, command or ebs_snapshot), merged into /etc/backup-agent/config.yaml'

checks = BackupAgentCookbook::Validation::CALLBACKS
storage_classes = BackupAgentCookbook::Validation::STORAGE_CLASSES

property :job_name, String, name_property: true, description: 'the job name (the key under jobs:)'
property :type, String, equal_to: BackupAgentCookbook::Validation::JOB_TYPES, description: 'files, command or ebs_snapshot'

# Every type.
property :schedule, String, callbacks: checks[:schedule], description: "e.g. 'daily at 02:00', 'every 6 hours'; none: only `backup-agent run`"
property :splay, Integer, callbacks: checks[:splay]
property :catch_up, [true, false]
property :retention, Hash, callbacks: checks[:retention]
property :timeout, [Integer, Float]
property :pre, Array, callbacks: checks[:argv]
property :post, Array, callbacks: checks[:argv]

# files and command jobs: where their data is stored.
property :storage_class, String, equal_to: storage_classes
property :transition_days, Integer
property :transition_class, String, equal_to: storage_classes - %w(STANDARD)
property :restore_tier, String, equal_to: %w(Expedited Standard Bulk)
property :restore_days, Integer

# files jobs.
property :paths, Array, callbacks: checks[:absolute_paths]
property :exclude, Array, callbacks: checks[:strings]
property :one_file_system, [true, false]
property :follow_symlinks, [true, false]

# command jobs.
property :command, Array, callbacks: checks[:argv]
property :shell, [true, false]
property :preset, String, equal_to: %w(postgresql mysql)
property :database, String
property :tables, Array, callbacks: checks[:strings]
property :schemas, Array, callbacks: checks[:strings]
property :host, String
property :port, Integer
property :username, String
property :env, Hash, callbacks: checks[:string_map], description: 'not for secrets: job_secrets.<job>.env of the data bag item is'
property :user, String
property :compression, String, equal_to: %w(gzip zstd none)
property :restore_command, Array, callbacks: checks[:argv]
property :allow_empty, [true, false], description: 'a command that exits 0 without output is a backup (default: the run fails)'

# ebs_snapshot jobs.
property :volumes, [String, Array], callbacks: checks[:volumes]
property :exclude_root, [true, false]
property :multi_volume, [true, false]
property :tags, Hash, callbacks: checks[:string_map]
property :wait, [true, false]
property :wait_timeout, [Integer, Float]
property :copy_to_regions, Array, callbacks: checks[:strings]
property :copy_kms_key_id, String
property :freeze_paths, Array, callbacks: checks[:absolute_paths], description: "the config's `freeze` (filesystems to fsfreeze)"
property :hook_timeout, [Integer, Float]

# A name property is not checked like a set value: check it here, at compile time.
def after_created
  super
  return if BackupAgentCookbook::Validation::JOB_NAME.match?(job_name)
  raise Chef::Exceptions::ValidationFailed,
        "backup_agent_job[#{name}]: '#{job_name}' is not a job name (letters, digits, '_', '.', '-'; at most 63)"
end

action :create, description: 'Adds the job to the config rendered at the end of this run' do
  backup_agent_register_job(new_resource.job_name, job)
end

action :delete, description: 'Leaves the job out of the config rendered at the end of this run, even if attributes define it' do
  backup_agent_register_job(new_resource.job_name, nil)
end

action_class do
  # The properties that were set, under the config file's key names.
  def job
    keys = new_resource.class.properties(false).keys - [:job_name]
    keys.select { |key| new_resource.property_is_set?(key) }.to_h do |key|
      [key == :freeze_paths ? 'freeze' : key.to_s, new_resource.public_send(key)]
    end
  end
end
