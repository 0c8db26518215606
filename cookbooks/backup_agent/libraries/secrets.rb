#
# Cookbook:: backup_agent
# Library:: secrets
#
# Loads bucket and credentials from the encrypted data bag item backup_agent/<policy_group> on
# Policyfile nodes, else backup_agent/<chef_environment>, else the fallback item `default`, and
# the secrets of command jobs (job_secrets.<job>.password / .env) and the notification URLs
# (notify.healthchecks_url / .webhook_url: whoever has one can report as the node). Secrets a wrapper cookbook put
# in node.run_state instead go through the same checks. Every failure becomes one SecretsError
# whose message names where the values came from and, where it applies, the key: the converge
# stops before anything is changed.

require 'chef/encrypted_data_bag_item'
require 'json'
require_relative 'secret_keys'

module BackupAgentCookbook
  class SecretsError < StandardError; end

  module Secrets
    # libraries/secret_keys.rb: the one list Validation and ConfigBuilder read too.
    KEYS = SecretKeys::STORAGE
    REQUIRED = SecretKeys::REQUIRED
    JOB_SECRETS = SecretKeys::JOB_SECRETS
    NOTIFY = SecretKeys::NOTIFY
    NOTIFY_KEYS = SecretKeys::NOTIFY_KEYS

    module_function

    # dsl:          anything with Chef's data_bag / data_bag_item (a recipe)
    # settings:     node['backup_agent']['data_bag']
    # policy_group: node.policy_group (nil unless the node uses Policyfiles)
    def load(dsl, settings, environment, policy_group = nil)
      bag = settings['name']
      candidates = item_candidates(settings, environment, policy_group)
      item_name = find_item(dsl, bag, candidates)
      secret_file = settings['secret_file'] || Chef::Config[:encrypted_data_bag_secret] ||
                    '(none: encrypted_data_bag_secret is not set)'
      where = "data bag item '#{bag}/#{item_name}'"

      secret = load_secret(settings['secret_file'], where) if settings['secret_file']
      item = fetch_item(dsl, bag, item_name, secret, where, secret_file)
      if settings['require_encrypted'] && !item.is_a?(Chef::EncryptedDataBagItem)
        raise SecretsError, "backup_agent: #{where} is not encrypted; create it with `knife data bag " \
                            "from file #{bag} ITEM.json --secret-file FILE` (or set " \
                            "node['backup_agent']['data_bag']['require_encrypted'] to false)"
      end

      extract(item, where, secret_file)
    end

    # Every key of the store's item (storage keys, job_secrets, notify), checked: the same for
    # every place the secrets come from.
    def extract(item, where, secret_file)
      values = read_values(item, where, secret_file)
      check(values, where)
      job_secrets = read_value(item, JOB_SECRETS, where, secret_file)
      values[JOB_SECRETS] = check_job_secrets(stringify(job_secrets), where) unless job_secrets.nil?
      notify = read_value(item, NOTIFY, where, secret_file)
      values[NOTIFY] = check_notify(stringify(notify), where) unless notify.nil?
      values.freeze
    end

    # A chef-vault item (node['backup_agent']['secrets']['source'] = 'chef_vault'): the vault is
    # the data bag settings' name, the item chosen as for a data bag item; only the nodes (and
    # admins) the vault was shared with can decrypt it, instead of everyone with the shared secret.
    # chef_vault_item is Chef's own (Chef::DSL::ChefVault, with the chef-vault gem Chef 18 ships).
    def load_vault(dsl, settings, environment, policy_group = nil)
      bag = settings['name']
      item_name = find_item(dsl, bag, item_candidates(settings, environment, policy_group))
      where = "chef-vault item '#{bag}/#{item_name}'"
      item = begin
               dsl.chef_vault_item(bag, item_name)
             rescue StandardError => e
               raise SecretsError, "backup_agent: cannot load #{where} (is this node one of the vault's clients? " \
                                   "`knife vault update #{bag} #{item_name} -S 'name:NODE'`): #{e.class}: #{first_line(e)}"
             end
      extract(item, where, nil)
    end

    # A secret service through Chef 18's `secret` helper (node['backup_agent']['secrets']['source']
    # = 'secret'), e.g. AWS Secrets Manager: the secret's value is a JSON object of the data bag
    # item's keys. store: node['backup_agent']['secrets'] (secret_name, secret_service, secret_config).
    def load_service(dsl, store)
      name = store['secret_name']
      service = store['secret_service'].to_s.to_sym
      where = "secret '#{name}' (#{service})"
      config = (store['secret_config'] || {}).to_h.transform_keys(&:to_sym)
      value = begin
                dsl.secret(name: name, service: service, config: config)
              rescue StandardError => e
                raise SecretsError, "backup_agent: cannot fetch #{where}: #{e.class}: #{first_line(e)}"
              end
      value = parse_service_value(value, where)
      extract(value, where, nil)
    end

    # Never echoes the value: a malformed secret is still a secret.
    def parse_service_value(value, where)
      value = JSON.parse(value) if value.is_a?(String)
      return value.to_h.transform_keys(&:to_s) if value.respond_to?(:to_h) && !value.is_a?(Array)
      raise SecretsError, "backup_agent: #{where} must hold a JSON object of the data bag item's keys, got #{value.class}"
    rescue JSON::ParserError
      raise SecretsError, "backup_agent: #{where} must hold a JSON object of the data bag item's keys, got text that is not JSON"
    end

    # On a Policyfile node its policy group (e.g. production) says where it runs. Chef Infra
    # Client 18 copies the group into chef_environment as well; the group comes first anyway,
    # so a node whose environment says something else still gets its group's item.
    def item_candidates(settings, environment, policy_group = nil)
      return [settings['item']] if settings['item']
      [policy_group, environment, settings['fallback_item']].reject { |name| name.nil? || name.to_s.empty? }.uniq
    end

    # Secrets a wrapper cookbook put in node.run_state (from Vault, SSM, ...), the item's keys:
    # checked as the item's are, so a typo or half a key pair fails here, naming the key, not
    # as a config the agent rejects or a run that uses the instance profile by surprise.
    def from_run_state(provided, where)
      raise SecretsError, "backup_agent: #{where} must be a map of the data bag item's keys, got #{provided.class}" unless provided.respond_to?(:to_hash)
      extract(provided.to_hash.transform_keys(&:to_s), where, nil)
    end

    def stringify(value)
      case value
      when Hash then value.to_h { |key, item| [key.to_s, stringify(item)] }
      else value
      end
    end

    def find_item(dsl, bag, candidates)
      items = begin
                Array(dsl.data_bag(bag))
              rescue StandardError => e
                raise SecretsError, "backup_agent: cannot read data bag '#{bag}' (looking for item " \
                                    "'#{candidates.join("' or '")}'): #{e.class}: #{first_line(e)}"
              end
      found = candidates.find { |name| items.include?(name) }
      return found if found

      raise SecretsError, "backup_agent: data bag '#{bag}' has no item '#{candidates.join("' nor fallback item '")}' " \
                          "(it has: #{items.empty? ? 'none' : items.sort.join(', ')})"
    end

    def load_secret(path, where)
      Chef::EncryptedDataBagItem.load_secret(path)
    rescue StandardError => e
      raise SecretsError, "backup_agent: cannot load the secret for #{where} from #{path}: #{first_line(e)}"
    end

    def fetch_item(dsl, bag, item_name, secret, where, secret_file)
      dsl.data_bag_item(bag, item_name, secret)
    rescue StandardError => e
      check_local_json(bag, item_name, where)
      raise SecretsError, "backup_agent: cannot load #{where} (secret file #{secret_file}): " \
                          "#{e.class}: #{first_line(e)}"
    end

    # In local mode (chef-client -z, chef-solo) the item is a file that only the embedded server
    # parses, and a syntax error reaches us as "500 Internal Server Error". Say what it is.
    def check_local_json(bag, item_name, where)
      return unless Chef::Config[:local_mode] || Chef::Config[:solo_legacy_mode]
      Array(Chef::Config[:data_bag_path]).each do |dir|
        path = ::File.join(dir, bag, "#{item_name}.json")
        next unless ::File.file?(path)
        begin
          JSON.parse(::File.read(path))
        rescue JSON::ParserError => e
          raise SecretsError, "backup_agent: #{where} is not valid JSON (#{path}): #{first_line(e)}"
        end
      end
    end

    def read_values(item, where, secret_file)
      KEYS.each_with_object({}) do |key, values|
        value = read_value(item, key, where, secret_file)
        if SecretKeys::STORAGE_LISTS.include?(key)
          next if value.nil? || value == []
          unless value.is_a?(Array) && value.all?(String)
            raise SecretsError, "backup_agent: key '#{key}' of #{where} must be a list of strings, got #{value.class}"
          end
        else
          next if value.nil? || value.to_s.strip.empty?
          unless value.is_a?(String)
            raise SecretsError, "backup_agent: key '#{key}' of #{where} must be a string, got #{value.class}"
          end
        end
        values[key] = value
      end
    end

    # The agent derives its encryption keys from these secrets and refuses short ones; so does
    # the converge, before anything changes. Never echoes a value, not even its length.
    def check_encryption_keys(values, where)
      min = SecretKeys::MIN_ENCRYPTION_KEY_LENGTH
      named = { 'encryption_key' => values['encryption_key'] }
      Array(values['previous_encryption_keys']).each_with_index { |key, index| named["previous_encryption_keys.#{index}"] = key }
      named.each do |name, key|
        next if key.nil? || key.length >= min
        raise SecretsError, "backup_agent: key '#{name}' of #{where} must be at least #{min} characters " \
                            '(a random one: `openssl rand -base64 33`)'
      end
      return unless values.key?('previous_encryption_keys') && !values.key?('encryption_key')
      raise SecretsError, "backup_agent: #{where} has 'previous_encryption_keys' but no 'encryption_key' " \
                          '(previous keys only read old snapshots: new ones are sealed with encryption_key)'
    end

    # An encrypted item decrypts value by value on access, so a wrong secret shows up here.
    def read_value(item, key, where, secret_file)
      item[key]
    rescue StandardError => e
      raise SecretsError, "backup_agent: cannot decrypt key '#{key}' of #{where} with the " \
                          "secret from #{secret_file} (is it the secret the item was " \
                          "encrypted with?): #{e.class}"
    end

    def check_job_secrets(job_secrets, where)
      key = JOB_SECRETS
      fail_at = ->(path, message) { raise SecretsError, "backup_agent: key '#{path}' of #{where} #{message}" }
      fail_at.call(key, "must be a map keyed by job name, got #{job_secrets.class}") unless job_secrets.is_a?(Hash)
      job_secrets.each do |job, values|
        fail_at.call("#{key}.#{job}", "must be a map (password, env), got #{values.class}") unless values.is_a?(Hash)
        values.each do |name, value|
          path = "#{key}.#{job}.#{name}"
          message = job_secret_error(name, value)
          fail_at.call(path, message) if message
        end
      end
      job_secrets
    end

    # Each key of SecretKeys::JOB has its check here (a spec keeps the two in step).
    def job_secret_error(name, value)
      case name
      when 'password'
        "must be a string, got #{value.class}" unless value.is_a?(String)
      when 'env'
        'must be a map of environment variable names to strings' unless value.is_a?(Hash) && value.all? { |k, v| k.is_a?(String) && v.is_a?(String) }
      else
        "is not a job secret (use #{SecretKeys::JOB.keys.join(' or ')})"
      end
    end

    def check_notify(notify, where)
      fail_at = ->(path, message) { raise SecretsError, "backup_agent: key '#{path}' of #{where} #{message}" }
      fail_at.call(NOTIFY, "must be a map (#{NOTIFY_KEYS.join(', ')}), got #{notify.class}") unless notify.is_a?(Hash)
      notify.each do |name, value|
        fail_at.call("#{NOTIFY}.#{name}", "is not a notification URL (use #{NOTIFY_KEYS.join(' or ')})") unless NOTIFY_KEYS.include?(name)
        fail_at.call("#{NOTIFY}.#{name}", "must be a string, got #{value.class}") unless value.is_a?(String)
      end
      notify
    end

    def check(values, where)
      check_encryption_keys(values, where)
      REQUIRED.each do |key|
        next if key == 'bucket' && values.key?('db_password') # a database destination has no bucket
        raise SecretsError, "backup_agent: #{where} has no key '#{key}'" unless values.key?(key)
      end
      # Both keys, or neither (instance-profile mode): half a key pair is always a mistake.
      pair = %w(access_key_id secret_access_key)
      present = pair.select { |key| values.key?(key) }
      if present.size == 1
        missing = (pair - present).first
        raise SecretsError, "backup_agent: #{where} has no key '#{missing}' (it has '#{present.first}'; " \
                            'give both keys, or neither to use the instance profile)'
      end
      # Temporary credentials: a token means nothing without the key pair it was issued with.
      return unless values.key?('session_token') && present.empty?
      raise SecretsError, "backup_agent: #{where} has 'session_token' but no 'access_key_id' and " \
                          "'secret_access_key' (a session token goes with the key pair it was issued with)"
    end

    def first_line(error)
      error.message.to_s.lines.first.to_s.strip
    end
  end
end
