#
# Cookbook:: backup_agent
# Library:: config_builder
#
# Builds the agent's config.yaml as plain data, from node attributes and the secrets of the data
# bag item. Pure: no node, no I/O, so it is easy to test and its output is stable between runs
# (a stable rendering is what keeps a second converge at 0 updated resources).

require 'json'
require 'yaml'

module BackupAgentCookbook
  module ConfigBuilder
    # Keys of the data bag item that become storage.* keys, under the same names.
    STORAGE_SECRET_KEYS = %w(bucket region endpoint_url access_key_id secret_access_key kms_key_id).freeze

    module_function

    # settings:    node['backup_agent']['config'] (non-secret settings)
    # jobs:        node['backup_agent']['jobs'] (map keyed by job name)
    # secrets:     the loaded data bag values (string keys)
    # node_name:   fallback for `node`
    # environment: node.chef_environment
    def build(settings:, jobs:, secrets:, node_name:, environment:)
      settings = plain(settings || {})
      secrets = plain(secrets || {})

      storage = STORAGE_SECRET_KEYS.to_h { |key| [key, secrets[key]] }
      storage['prefix'] = settings['prefix']
      storage['sse'] = settings['sse']

      config = {
        'node' => settings['node'] || node_name,
        'environment' => environment,
        'state_dir' => settings['state_dir'],
        'log_level' => settings['log_level'],
        'splay' => settings['splay'],
        'max_parallel_jobs' => settings['max_parallel_jobs'],
        'storage' => order(storage, %w(bucket prefix region endpoint_url access_key_id secret_access_key sse kms_key_id)),
        'aws' => settings['aws'],
        'jobs' => jobs_map(jobs),
        'notify' => {
          'healthchecks_url' => settings['healthchecks_url'],
          'webhook_url' => settings['webhook_url'],
        },
        'metrics' => { 'textfile' => settings['metrics_textfile'] },
      }
      compact(config)
    end

    # Jobs sorted by name, so the file does not change when precedence levels merge in another
    # order. A job set to nil (how an environment removes a job a role added) is dropped.
    def jobs_map(jobs)
      plain(jobs || {}).compact.sort.to_h
    end

    # Drops nil values and the hashes that become empty: the agent rejects unknown keys and
    # applies its own defaults, so an unset attribute must not reach the file at all.
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
      keys.to_h { |key| [key, hash[key]] }.merge(hash.reject { |key, _| keys.include?(key) })
    end

    # line_width -1: long values (URLs, commands) stay on one line.
    def dump(config)
      YAML.dump(config, line_width: -1)
    end
  end
end
