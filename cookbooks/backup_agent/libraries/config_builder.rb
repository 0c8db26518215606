#
# Cookbook:: backup_agent
# Library:: config_builder
#
# Builds the agent's config.yaml as plain data from three sources:
#   - node['backup_agent']['config']: the file's non-secret settings, under the file's own keys;
#   - jobs: node['backup_agent']['jobs'] and the backup_agent_job resources of this run;
#   - secrets: the encrypted data bag item (storage.* keys, and job_secrets merged into jobs).
# Pure: no node, no I/O, so it is easy to test, and its output depends only on its inputs, in a
# fixed key order (a stable rendering is what keeps a second converge at 0 updated resources).

require 'json'
require 'yaml'
require_relative 'secret_keys'
require_relative 'validation'

module BackupAgentCookbook
  module ConfigBuilder
    # Keys of the data bag item that become storage.* keys, under the same names.
    STORAGE_SECRET_KEYS = Validation::STORAGE_SECRET_KEYS
    TOP_ORDER = %w(node environment state_dir log_level log_format splay max_parallel_jobs stop_timeout
                   storage aws jobs notify metrics).freeze
    STORAGE_ORDER = %w(type bucket dsn password sslmode sslrootcert prefix region endpoint_url access_key_id
                       secret_access_key session_token sse kms_key_id encryption_key previous_encryption_keys
                       compression_level read_unencrypted_snapshots).freeze
    # What a data bag item may add to a job under job_secrets.<job>: only command jobs take them.
    JOB_SECRET_KEYS = SecretKeys::JOB.keys.freeze
    NOTIFY_SECRET_KEYS = SecretKeys::NOTIFY_KEYS

    module_function

    # settings:      node['backup_agent']['config']
    # jobs:          node['backup_agent']['jobs'] (map keyed by job name; a nil job is removed)
    # resource_jobs: { name => job Hash, or nil for a job a backup_agent_job :delete removed }
    # secrets:       the loaded data bag values (string keys)
    # node_name:     fallback for `node`
    # environment:   node.chef_environment, fallback for `environment`
    def build(settings:, jobs:, secrets:, node_name:, environment:, resource_jobs: {})
      config = plain(settings || {})
      secrets = plain(secrets || {})
      config['node'] = node_name if config['node'].nil?
      config['environment'] = environment if config['environment'].nil?

      storage = config['storage'].is_a?(Hash) ? config['storage'] : {}
      config['storage'] = storage.merge(secrets.slice(*STORAGE_SECRET_KEYS)
                                               .transform_keys { |key| SecretKeys::STORAGE_CONFIG_KEY.fetch(key, key) })
      # The notification URLs are credentials: only the data bag item's `notify` sets them.
      notify = config['notify'].is_a?(Hash) ? config['notify'] : {}
      config['notify'] = notify.merge((secrets['notify'] || {}).slice(*NOTIFY_SECRET_KEYS))

      merged = merge_jobs(jobs, resource_jobs)
      add_job_secrets(merged, secrets['job_secrets'] || {})
      config['jobs'] = merged.sort.to_h { |name, job| [name, canonical_job(job)] }

      config = compact(config)
      config['storage'] = order(config['storage'], STORAGE_ORDER) if config['storage']
      order(config, TOP_ORDER)
    end

    # A job declared by a backup_agent_job resource is the base; attributes of the same name are
    # merged over it key by key (so an environment tunes a wrapper's job: schedule, retention).
    # A job set to nil in attributes, or deleted by a resource, is dropped.
    def merge_jobs(attribute_jobs, resource_jobs)
      attribute_jobs = plain(attribute_jobs || {})
      resource_jobs = plain(resource_jobs || {})
      jobs = resource_jobs.compact
      attribute_jobs.each do |name, job|
        next if resource_jobs.key?(name) && resource_jobs[name].nil?
        if job.nil?
          jobs.delete(name)
        else
          jobs[name] = deep_merge(jobs[name] || {}, job)
        end
      end
      jobs
    end

    # job_secrets of the data bag item go only into jobs this node has: a shared item may hold
    # the passwords of jobs other nodes run.
    def add_job_secrets(jobs, job_secrets)
      job_secrets.each do |name, values|
        job = jobs[name]
        # A job without a type is reported by the caller's completeness check.
        next unless job.is_a?(Hash) && values.is_a?(Hash) && job['type']
        keys = values.keys & JOB_SECRET_KEYS
        next if keys.empty?
        unless job['type'] == 'command'
          raise ConfigError, "backup_agent: job_secrets.#{name} (#{keys.join(', ')}) of the data bag item is for " \
                             "job '#{name}', which is a #{job['type']} job: only command jobs take them"
        end
        keys.each { |key| job[SecretKeys::JOB[key]] = values[key] }
        next unless values['env']
        # The item's env goes to `secret_env`, which the agent masks whatever the names; the item
        # wins over a plain attribute of the same name (the agent refuses a name in both).
        env = (job['env'] || {}).reject { |var, _| values['env'].key?(var) }
        env.empty? ? job.delete('env') : job['env'] = env
      end
    end

    # `type` first, every map's keys sorted: the same job renders the same way whichever
    # precedence level or resource it came from.
    def canonical_job(job)
      return job unless job.is_a?(Hash)
      sorted = sort_keys(job)
      sorted.key?('type') ? { 'type' => sorted['type'] }.merge(sorted) : sorted
    end

    def sort_keys(value)
      case value
      when Hash then value.sort.to_h { |key, item| [key, sort_keys(item)] }
      when Array then value.map { |item| sort_keys(item) }
      else value
      end
    end

    def deep_merge(base, over)
      base.merge(over) { |_key, old, new| old.is_a?(Hash) && new.is_a?(Hash) ? deep_merge(old, new) : new }
    end

    # Drops nil values and the maps that become empty: the agent rejects unknown keys and applies
    # its own defaults, so an unset attribute must not reach the file at all.
    def compact(value)
      case value
      when Hash
        value.each_with_object({}) do |(key, item), out|
          item = compact(item)
          next if item.nil? || (item.is_a?(Hash) && item.empty?)
          out[key] = item
        end
      when Array
        value.map { |item| compact(item) }.compact
      else
        value
      end
    end

    # Node attributes (ImmutableMash, frozen strings, symbols) as plain JSON-able Ruby data, so the
    # YAML dump carries no Ruby object tags.
    def plain(value)
      JSON.parse(JSON.generate(value))
    end

    def order(hash, keys)
      known = keys.select { |key| hash.key?(key) }.to_h { |key| [key, hash[key]] }
      known.merge(hash.reject { |key, _| keys.include?(key) }.sort.to_h)
    end

    # line_width -1: long values (URLs, commands) stay on one line.
    def dump(config)
      YAML.dump(config, line_width: -1)
    end
  end
end
